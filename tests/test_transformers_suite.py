"""tests/transformers_suite.py: pytest-xdist's workers fetching transformers' test suite at the same time."""

import os
import subprocess
import sys
import time
from pathlib import Path

from transformers_suite import exclusive, package_name

IMPORT = (
    "import sys; sys.path.insert(0, sys.argv[1]); import transformers_suite; "
    "print(transformers_suite.import_model_tester_mixin('0.0.race').MARKER)"
)


def test_a_worker_waits_for_the_one_fetching_and_imports_what_it_left(tmp_path):
    cache = tmp_path / "cache"
    (cache / "0.0.race").mkdir(parents=True)
    # a fetch of its own would fail: the worker must use the suite that the lock holder completes
    env = os.environ | {"POSFORMER_TRANSFORMERS_TESTS": str(cache), "POSFORMER_TRANSFORMERS_SOURCE": str(tmp_path)}
    with exclusive(cache / "0.0.race" / ".fetch.lock"):
        worker = subprocess.Popen(
            [sys.executable, "-c", IMPORT, str(Path(__file__).parent)], env=env, stdout=subprocess.PIPE, text=True
        )
        time.sleep(5)  # time to import transformers and reach the lock (later, it finds the suite complete)
        assert worker.poll() is None, "the worker did not wait for the lock"
        package = cache / "0.0.race" / package_name("0.0.race")
        package.mkdir()
        (package / "__init__.py").touch()
        (package / "test_modeling_common.py").write_text("MARKER = 'the suite the first worker fetched'\n")
    output, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0
    assert output.strip() == "the suite the first worker fetched"
