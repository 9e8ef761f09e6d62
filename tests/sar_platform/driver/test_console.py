"""What reaches the user's console from Ray's processes: a trial process ended by Tune prints no
traceback, while real faults inside it still do."""
import subprocess
import sys
import textwrap

from tests.conftest import REPO

TRIAL_PROCESS = textwrap.dedent("""
    import gc, sys
    from sar_platform.driver.sweep import quiet_actor_exit
    sys.unraisablehook = quiet_actor_exit  # what run_trial installs in the trial's process

    class EndedBySigterm:  # Ray's SIGTERM handler raising inside a garbage-collection callback
        def __del__(self):
            raise SystemExit(1)

    class Broken:
        def __del__(self):
            raise ValueError("a real fault")

    EndedBySigterm(); Broken(); gc.collect()
    print("done")
""")


def test_a_trial_process_ended_by_sigterm_prints_no_traceback_but_real_faults_still_show():
    out = subprocess.run([sys.executable, "-c", TRIAL_PROCESS], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": f"{REPO}:{REPO / 'platform'}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr
    assert "SystemExit" not in out.stderr
    assert "Exception ignored" in out.stderr and "ValueError: a real fault" in out.stderr
