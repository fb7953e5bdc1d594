"""Adapters for other people's training: Lightning and Hugging Face callbacks, TensorBoard and W&B writers.

Each imports its library only when used, so the core install does not need them:

* :mod:`initdiag.integrations.tensorboard`: ``write_tensorboard``, ``TensorBoardSink`` (``initdiag[tensorboard]``);
* :mod:`initdiag.integrations.wandb`: ``log_wandb``, ``WandbSink`` (``initdiag[wandb]``).

Both name a series ``initdiag/<kind>/<stat>/<layer>`` (``@init`` / ``@final`` for the probes) and step it by
the frame's ``step``."""
