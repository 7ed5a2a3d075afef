"""Which of TensorFlow's GPU-probe lines are dropped (pure text, no TF)."""

from __future__ import annotations

from lamina.models.tf import gpu_probe_output

ABSL = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
NO_DRIVER = ("I0000 00:00:1796116023.406856   10045 cudart_stub.cc:31] Could not find cuda "
             "drivers on your machine, GPU will not be used.\n")
CUINIT = ("E0000 00:00:1796116032.226694   10045 cuda_platform.cc:52] failed call to cuInit: "
          "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")


def test_the_no_driver_lines_and_their_cuinit_error_are_dropped() -> None:
    assert gpu_probe_output(ABSL + NO_DRIVER + ABSL + NO_DRIVER + CUINIT) == ("", True)


def test_other_lines_are_kept_in_order() -> None:
    real = "E0000 00:00:1.0 1 op_kernel.cc:1] something real failed\n"
    shown, no_driver = gpu_probe_output(ABSL + "a python warning\n" + NO_DRIVER + CUINIT + real)
    assert no_driver and shown == "a python warning\n" + real


def test_a_cuinit_failure_with_a_driver_installed_is_kept() -> None:
    assert gpu_probe_output(CUINIT) == (CUINIT, False)
