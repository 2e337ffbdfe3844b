"""The README's main job as a fresh machine runs it, in full: the default model trained on the built-in corpus
reaches the test BLEU the README states, its CTranslate2 float32 export translates the whole test split as
transformers' `generate` does, and its int8 export stays within 0.5 BLEU of float32 (docs/deployment.md's bar).

A release check, not part of CI: training alone takes 9-17 minutes on 2 cores (25 under `pytest -n 2`, on one core
beside the other worker), which the 30-minute CI cannot hold beside the rest of the suite. Run it with

    POSFORMER_RELEASE_CHECKS=1 python -m pytest -q tests/test_main_job.py
"""

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUALITY_SCRIPT = ROOT / "benchmarks" / "ctranslate2_quality.py"
# posformer-train's test BLEU for the main job: the README states 33.0, docs/deployment.md's runs 32.44 and 33.03; the
# run's float ordering (threads, kernels) moves it by tenths, and a broken model or recipe by far more
MIN_TEST_BLEU = 31.0
INT8_MAX_BLEU_DROP = 0.5
# CTranslate2 float32 against transformers' generate, beam 4 over 1,500 sentences: 0 differ in docs/deployment.md;
# float ordering may flip a near-tie beam now and then
MAX_FLOAT32_DIFFERENCES = 15


def readme_main_job() -> list[str]:
    """The `posformer-train ...` arguments of the README's main-job line (`pip install -e . && posformer-train ...`)."""
    match = re.search(r"# the main job.*\n.*&& posformer-train (.*)", (ROOT / "README.md").read_text())
    assert match, "README.md has no main-job command under a '# the main job' comment"
    return shlex.split(match.group(1))


def load_quality_script():
    spec = importlib.util.spec_from_file_location("ctranslate2_quality", QUALITY_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.longest
@pytest.mark.skipif(
    os.environ.get("POSFORMER_RELEASE_CHECKS") != "1",
    reason="a release check of 10-25 minutes: POSFORMER_RELEASE_CHECKS=1 python -m pytest -q tests/test_main_job.py",
)
def test_the_main_job_reaches_its_bleu_and_its_int8_export_stays_within_half_a_bleu(tmp_path):
    pytest.importorskip("ctranslate2")
    arguments = readme_main_job()
    assert arguments[:2] == ["--output_dir", "runs/en-de"], arguments  # run in tmp_path, as the README runs it in .
    executable = shutil.which("posformer-train")
    assert executable is not None, "the posformer-train console script is not installed"
    job = subprocess.run([executable, *arguments], cwd=tmp_path, capture_output=True, text=True)
    assert job.returncode == 0, job.stderr[-4000:]
    run_dir = tmp_path / "runs" / "en-de"
    test_bleu = json.loads((run_dir / "results.json").read_text())["test_bleu"]
    assert test_bleu >= MIN_TEST_BLEU, f"the main job's test BLEU is {test_bleu:.2f}"

    # exits naming int8 if it scores more than the bar below float32 (`check_bleu_drop`)
    results = load_quality_script().main([str(run_dir), "--max_bleu_drop", str(INT8_MAX_BLEU_DROP)])
    assert results["ctranslate2 float32"]["differ_from_torch"] <= MAX_FLOAT32_DIFFERENCES, results
    assert abs(results["torch"]["bleu"] - test_bleu) < 1.0, (results, test_bleu)  # the same model, the same split
