"""MPS control daemon: the CPU fallback for real, the command plumbing with stand-in binaries, and
the real daemon on an NVIDIA GPU (marked `gpu`, skipped elsewhere)."""

import logging
import os
import stat
import subprocess
import textwrap

import pytest

from cluster.mps_daemon import MPSDaemon, visible_gpu_count
from schedulers.mps import cpu_thread_share


def write_executable(path, text):
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(0o755)


@pytest.fixture
def fake_nvidia_bin(tmp_path, monkeypatch):
    """A PATH holding shell-script stand-ins for nvidia-smi and nvidia-cuda-mps-control.

    The fake daemon creates the control FIFO on `-d` and removes it on `quit`, and records each
    call with the MPS environment it saw, so the test checks what MPSDaemon really ran.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    write_executable(
        bin_dir / "nvidia-smi",
        """
        #!/bin/sh
        [ "$1" = "-L" ] || exit 2
        echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)"
        """,
    )
    write_executable(
        bin_dir / "nvidia-cuda-mps-control",
        f"""
        #!/bin/sh
        echo "args=$* pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY" >> {calls}
        if [ "$1" = "-d" ]; then mkfifo "$CUDA_MPS_PIPE_DIRECTORY/control"; exit 0; fi
        read command
        echo "stdin=$command" >> {calls}
        [ "$command" = "quit" ] && rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"
        exit 0
        """,
    )
    # The stand-ins come first; /usr/bin:/bin stay for the scripts' own mkfifo and rm.
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"]))
    return bin_dir, calls


def test_without_mps_start_falls_back_with_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no NVIDIA tools, as on any CPU machine
    daemon = MPSDaemon(tmp_path / "run")
    assert not daemon.available()
    with caplog.at_level(logging.WARNING, logger="cluster.mps_daemon"):
        assert daemon.start() is False
    assert "MPS unavailable: nvidia-cuda-mps-control not found on PATH" in caplog.text
    assert "falling back to plain concurrency" in caplog.text
    assert daemon.worker_env(0.5) == {}
    assert daemon.stop() is False
    assert not (tmp_path / "run").exists(), "nothing is created when MPS is unavailable"
    with MPSDaemon(tmp_path / "run") as managed:
        assert not managed.running and managed.worker_env(1.0) == {}


def test_this_machine_without_gpu_reports_unavailable(tmp_path):
    if visible_gpu_count() > 0:
        pytest.skip("this machine has an NVIDIA GPU; the fallback is covered with an empty PATH above")
    daemon = MPSDaemon(tmp_path)
    assert daemon.available() is False
    assert daemon.start() is False
    assert daemon.worker_env(0.3) == {}


def test_binary_without_gpu_is_unavailable(fake_nvidia_bin, tmp_path):
    bin_dir, _ = fake_nvidia_bin
    write_executable(bin_dir / "nvidia-smi", "#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    daemon = MPSDaemon(tmp_path / "run")
    assert daemon.unavailable_reason() == "`nvidia-smi -L` lists no NVIDIA GPU"
    assert daemon.start() is False


def test_start_stop_and_worker_env_run_the_real_commands(fake_nvidia_bin, tmp_path):
    _, calls = fake_nvidia_bin
    run_dir = tmp_path / "run"
    pipe, log = run_dir / "mps" / "pipe", run_dir / "mps" / "log"
    with MPSDaemon(run_dir) as daemon:
        assert daemon.running
        assert stat.S_ISFIFO(os.stat(pipe / "control").st_mode)
        assert log.is_dir()
        assert daemon.worker_env(0.25) == {
            "CUDA_MPS_PIPE_DIRECTORY": str(pipe),
            "CUDA_MPS_LOG_DIRECTORY": str(log),
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25",
        }
        assert daemon.worker_env(1.0)["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "100"
        assert daemon.worker_env(0.004)["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "1"
        assert daemon.start() is True  # idempotent: no second `-d`
    assert not daemon.running and daemon.worker_env(0.5) == {}
    assert not (pipe / "control").exists(), "quit reached the daemon"
    assert calls.read_text().splitlines() == [
        f"args=-d pipe={pipe} log={log}",
        f"args= pipe={pipe} log={log}",
        "stdin=quit",
    ]


def test_failed_daemon_start_raises_naming_pipe_dir(fake_nvidia_bin, tmp_path):
    bin_dir, _ = fake_nvidia_bin
    write_executable(
        bin_dir / "nvidia-cuda-mps-control", "#!/bin/sh\necho 'An instance of this daemon is already running'\nexit 1\n"
    )
    daemon = MPSDaemon(tmp_path / "run")
    with pytest.raises(RuntimeError, match="already running") as error:
        daemon.start()
    assert str(daemon.pipe_dir) in str(error.value)
    assert not daemon.running


@pytest.mark.parametrize("quota", [0.0, -0.1, 1.01, float("nan")])
def test_quota_outside_unit_interval_is_rejected(quota, tmp_path):
    with pytest.raises(ValueError, match="quota"):
        MPSDaemon(tmp_path).worker_env(quota)
    with pytest.raises(ValueError, match="quota"):
        cpu_thread_share(quota, 8)


def test_cpu_thread_share():
    assert cpu_thread_share(1.0, 8) == 8
    assert cpu_thread_share(0.5, 8) == 4
    assert cpu_thread_share(0.3, 10) == 3  # 0.3 * 10 is 2.9999999999999996 in floats
    assert cpu_thread_share(0.75, 2) == 1  # floor: the group stays within 2 threads
    assert cpu_thread_share(0.1, 2) == 1  # never zero threads
    # A group whose quotas sum to 1 never takes more threads than the node has.
    for total in (3, 7, 16, 64):
        assert sum(cpu_thread_share(q, total) for q in (0.2, 0.3, 0.5)) <= total
    # ...except where the at-least-one rule rounds up: three workers on two threads get one each.
    assert [cpu_thread_share(q, 2) for q in (0.2, 0.3, 0.5)] == [1, 1, 1]
    with pytest.raises(ValueError, match="total_threads"):
        cpu_thread_share(0.5, 0)


@pytest.mark.gpu
def test_real_mps_daemon_on_gpu(tmp_path):
    if visible_gpu_count() < 1:
        pytest.skip("no NVIDIA GPU listed by nvidia-smi")
    daemon = MPSDaemon(tmp_path)
    if not daemon.available():
        pytest.skip(f"MPS unavailable: {daemon.unavailable_reason()}")
    with daemon:
        assert daemon.running
        control = daemon.pipe_dir / "control"
        mode = os.stat(control).st_mode
        assert stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
        env = daemon.worker_env(0.5)
        assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
        # The daemon answers control commands on our private pipe directory.
        result = subprocess.run(
            ["nvidia-cuda-mps-control"],
            input="get_server_list\n",
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
    assert not daemon.running
