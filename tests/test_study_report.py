"""tools/report.py: the study's report says what was measured, and "not run" for the rest."""

import importlib.util
import json
import sys
from pathlib import Path

TOOLS = Path(__file__).parent.parent / "tools"


def load_report():
    sys.path.insert(0, str(TOOLS))
    spec = importlib.util.spec_from_file_location("report", TOOLS / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result(name, ppl, total=1000, disk=2000, recovery=0, mlp_saving=0.0, **extra):
    return {"name": name, "wiki_perplexity": ppl, "wiki_perplexity_stderr": ppl / 10,
            "params_total": total, "params_recovery": recovery, "disk_bytes": disk,
            "net_mlp_saving_percent": mlp_saving, "device": "cpu", **extra}


def test_report_reads_every_number_from_the_measurements(tmp_path):
    report = load_report()
    results = {
        "original": result("original", 10.0, decode_tok_per_s=20.0, prompt_tok_per_s=100.0,
                           peak_memory_gb=0.5),
        "mod-direct": result("mod-direct", 5000.0, total=900, disk=1800, recovery=50,
                             mlp_saving=25.0),
        "mod-wiki-ce": result("mod-wiki-ce", 12.5, total=900, disk=1600, mlp_saving=25.0,
                              decode_tok_per_s=18.0, prompt_tok_per_s=90.0,
                              peak_memory_gb=0.4),
    }
    machine = {"platform": "test", "cpus": 2, "device": "cpu", "mlx": "0", "mlx_lm": "0",
               "commit": "abc", "date": "today"}
    report.write_report(results, {"mod-wiki-ce": 12.0}, tmp_path, machine, 4096)
    text = (tmp_path / "README.md").read_text()
    assert "12.50 ± 1.25 (1.25x)" in text  # perplexity, its error and the ratio to 10.0
    assert "moderate (25.0% net MLP saving), wiki: target <= 1.10x; best measured 1.25x" in text
    assert "missed by 0.15x" in text
    assert "aggressive, wiki: not measured." in text
    assert "not run" in text  # e.g. the warmup-only cell
    assert "0.90x" in text and "1.25x" in text  # decode 18/20, ideal bytes 2000/1600
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["models"]["mod-wiki-ce"]["wiki_perplexity"] == 12.5
