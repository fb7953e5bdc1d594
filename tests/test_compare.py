"""``initdiag compare BASE NEW``: two real audits of a 20-layer ReLU MLP, at He (BASE) and at PyTorch's default
(NEW, whose signal vanishes): the newly failing check is listed and gates the exit code, the reverse lists it
resolved, per-layer variances beyond the factor are listed, bad input ends with one line and exit code 2, and the
accuracy z-test matches scipy's independent computation."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import initdiag
from initdiag.cli import main
from initdiag.compare import compare, load_summary, to_json
from initdiag.compare_render import html, to_markdown


def _mlp(he: bool, depth: int = 20) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(32, 64), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Linear(64, 64), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(64, 10))
    if he:
        for m in net.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
    return net


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    initdiag.audit(_mlp(he=True), input_shape=(32,)).write(root / "he", formats=("json",))
    initdiag.audit(_mlp(he=False), input_shape=(32,)).write(root / "default", formats=("json",))
    return root / "he", root / "default"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_check_newly_failing_is_listed_and_exits_3(reports: tuple[Path, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    base, new = reports
    code, out, _ = _run(["compare", str(base), str(new / "summary.json")], capsys)
    assert code == 3
    c = compare(load_summary(base), load_summary(new))
    assert c.runs == ("keep",)
    failing = {(v.check, v.outcome, v.signal) for v in c.worse if v.new == "fail"}
    assert ("signal", "vanishing", "forward") in failing
    signal = next(v for v in c.worse if v.check == "signal" and v.signal == "forward")
    assert signal.base == "pass" and signal.layers
    assert {v.check for v in c.regressions()} >= {"signal"}
    assert "signal" in out.splitlines()[0] and "| signal | vanishing | forward |" in out


def test_the_reverse_lists_it_resolved_and_exits_0(reports: tuple[Path, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    base, new = reports
    code, out, _ = _run(["compare", str(new), str(base)], capsys)
    assert code == 0
    c = compare(load_summary(new), load_summary(base))
    resolved = {(v.check, v.outcome, v.signal, v.base, v.new) for v in c.resolved}
    assert ("signal", "vanishing", "forward", "fail", "pass") in resolved
    assert not c.regressions() and "### Resolved in NEW" in out


def test_fail_on_narrows_the_gate(reports: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base, new = reports
    assert _run(["compare", str(base), str(new), "--fail-on", "symmetry,exploding"], capsys)[0] == 0
    assert _run(["compare", str(base), str(new), "--fail-on", "vanishing"], capsys)[0] == 3
    code, _, err = _run(["compare", str(base), str(new), "--fail-on", "nonsense"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_layer_variances_beyond_the_factor_are_listed(reports: tuple[Path, Path]) -> None:
    b, n = (load_summary(p) for p in reports)
    layer = {x["name"]: x for x in b["runs"][0]["layers"]}
    c = compare(b, n, factor=2.0)
    assert c.layers
    for x in c.layers:
        ratio = x.new / x.base
        assert ratio >= 2.0 or ratio <= 0.5
        assert layer[x.layer][x.stat] == x.base
    # every layer with a ratio beyond 2x in the data is listed (independent recount)
    newl = {x["name"]: x for x in n["runs"][0]["layers"]}
    expected = {(name, s) for name in layer for s in ("activation_variance_init", "gradient_variance_init")
                if layer[name][s] and newl[name][s] is not None
                and not 0.5 < newl[name][s] / layer[name][s] < 2.0}
    assert {(x.layer, x.stat) for x in c.layers} == expected
    # a huge factor lists none of the forward ones that moved less than it
    assert len(compare(b, n, factor=1e30).layers) < len(c.layers)
    # re-initialized weight layers: PyTorch default vs He is a variance ratio of 1/6 per hidden layer
    assert {w.change for w in c.weights} == {"reinitialized"}
    assert all(w.ratio is not None and w.ratio < 0.5 for w in c.weights)


def test_added_and_removed_weight_layers(reports: tuple[Path, Path]) -> None:
    b = load_summary(reports[0])
    n = copy.deepcopy(b)
    layers = n["runs"][0]["layers"]
    layers[0] = {**layers[0], "name": "renamed"}
    c = compare(b, n)
    assert {(w.layer, w.change) for w in c.weights} == {("0", "removed"), ("renamed", "added")}
    assert not c.worse and not c.resolved and not c.layers


def test_markdown_starts_with_the_verdict_line_and_json_is_strict(reports: tuple[Path, Path]) -> None:
    c = compare(*(load_summary(p) for p in reports))
    md = to_markdown(c)
    assert md.splitlines()[0] == c.verdict_line() and md.startswith("**Worse**")
    data = to_json(c)
    again = json.loads(json.dumps(data, allow_nan=False))
    assert again["kind"] == "compare" and again["worse"] and "ratio threshold" in again["rules"]["layers"]


def test_out_writes_the_three_files_html_escaped(reports: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    base, new = reports
    code, out, _ = _run(["compare", str(base), str(new), "--out", str(tmp_path)], capsys)
    assert code == 3 and {p.name for p in tmp_path.iterdir()} == {"compare.md", "compare.json", "compare.html"}
    assert out.startswith("**Worse**") and f"wrote {tmp_path / 'compare.json'}" in out
    page = (tmp_path / "compare.html").read_text()
    assert "http://" not in page and "https://" not in page and "<table>" in page
    b = load_summary(base)
    b["runs"][0]["verdicts"][0] = {**b["runs"][0]["verdicts"][0], "status": "fail", "message": "<script>x</script>"}
    assert "<script>x" not in html(compare(load_summary(new), b))


def test_bad_input_exits_2_with_one_line(reports: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    base, _ = reports
    other = load_summary(base)
    other["kind"] = "experiment"
    (tmp_path / "exp.json").write_text(json.dumps(other))
    (tmp_path / "plain.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "broken.json").write_text("{not json")
    old = {**load_summary(base), "schema_version": 2}
    (tmp_path / "old.json").write_text(json.dumps(old))
    for path, words in (("exp.json", "kinds differ"), ("plain.json", "not an initdiag summary"),
                        ("broken.json", "not JSON"), ("missing.json", "no such file"), ("old.json", "schema")):
        code, out, err = _run(["compare", str(base), str(tmp_path / path)], capsys)
        assert code == 2, path
        assert len(err.strip().splitlines()) == 1 and words in err, err
        assert out == ""


def _experiment(summary: dict[str, Any], accuracy: float, test_size: int) -> dict[str, Any]:
    data = copy.deepcopy(summary)
    data["kind"] = "experiment"
    data["dataset"]["test_size"] = test_size
    data["runs"][0]["test_accuracy"] = accuracy
    return data


def test_accuracy_difference_and_z_test_match_scipy(reports: tuple[Path, Path]) -> None:
    stats = pytest.importorskip("scipy.stats")
    b = load_summary(reports[0])
    c = compare(_experiment(b, 0.9712, 10000), _experiment(b, 0.9650, 10000))
    (acc,) = c.accuracy
    assert acc.difference == pytest.approx(0.9650 - 0.9712)
    # independent: the same pooled test as a 2x2 chi-squared test without continuity correction (chi2 = z^2)
    table = [[9712, 10000 - 9712], [9650, 10000 - 9650]]
    chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
    assert acc.z is not None and acc.z ** 2 == pytest.approx(chi2, rel=1e-9)
    assert acc.p_value == pytest.approx(p, rel=1e-9) and acc.significant is bool(p < 0.05)
    assert acc.z < 0 and "| keep | 97.12% | 96.50% | -0.62% |" in to_markdown(c)
    # no test size: the difference only
    (plain,) = compare(_experiment(b, 0.5, 0), _experiment(b, 0.6, 0)).accuracy
    assert plain.difference == pytest.approx(0.1) and plain.p_value is None and plain.z is None
    assert math.isclose(plain.new, 0.6)


def test_single_runs_with_different_names_are_paired(reports: tuple[Path, Path]) -> None:
    b, n = (load_summary(p) for p in reports)
    n["runs"][0]["name"] = "he"
    c = compare(b, n)
    assert c.runs == ("keep -> he",) and c.worse and not c.runs_added
    n["runs"].append({**n["runs"][0], "name": "xavier"})
    assert compare(b, n).runs == () and compare(b, n).runs_added == ("he", "xavier")


def test_the_markdown_goes_to_the_github_step_summary_too(reports: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from test_report_pages import assert_github_markdown

    base, new = reports
    step = tmp_path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    code, out, _ = _run(["compare", str(base), str(new)], capsys)
    assert code == 3 and step.read_text(encoding="utf-8") == out.rstrip("\n") + "\n\n"
    assert_github_markdown(out, lists=False)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "missing-dir" / "step.md"))
    code, _, err = _run(["compare", str(base), str(new)], capsys)  # an unwritable summary costs one line
    assert code == 3 and err.count("cannot append to GITHUB_STEP_SUMMARY") == 1
