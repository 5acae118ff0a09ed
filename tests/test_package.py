"""The package without its compiled extension: it imports, says why once, and runs the reference."""

import subprocess
import sys

import reidfast

WITHOUT_EXTENSION = """
import sys, warnings
sys.modules["reidfast._C"] = None  # makes `from reidfast import _C` raise ImportError
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch, reidfast
    from reidfast.ops import pyramid_pool, pyramid_pool_reference
messages = [str(w.message) for w in caught if "reidfast._C" in str(w.message)]
assert len(messages) == 1, messages
status = reidfast.available_backends()
assert status["reference"].available and not status["cpu"].available, status
assert "extension not loaded" in status["cpu"].reason, status["cpu"]
x = torch.randn(2, 3, 12, 4)
assert torch.equal(pyramid_pool(x, 6), pyramid_pool_reference(x, 6))
try:
    pyramid_pool(x, 6, backend="cpu")
except RuntimeError as error:
    assert "not available on this machine: extension not loaded" in str(error), error
else:
    raise AssertionError("backend='cpu' ran without the extension")
print("ok")
"""


def test_imports_and_works_without_extension():
    result = subprocess.run([sys.executable, "-c", WITHOUT_EXTENSION], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_available_backends_lists_every_backend():
    statuses = reidfast.available_backends()
    assert set(statuses) == {"reference", "cpu", "cuda", "triton"}
    for status in statuses.values():
        assert status.reason
        assert status.available == bool(status.devices)
