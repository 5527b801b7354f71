"""The ``xrayfeat`` script's entry point: its exit statuses, every exit handler run, the teardown skipped."""

from __future__ import annotations

import subprocess
import sys
import textwrap

ENTRY = textwrap.dedent("""
    import atexit, sys
    import xrayfeat.cli.main as cli

    MARK, sys.argv = sys.argv[1], ["xrayfeat", *sys.argv[2:]]
    command = cli.main

    class Witness:  # what the interpreter's teardown would do: finalise the objects still alive
        def __init__(self):
            self.file = open(MARK + ".teardown", "w")  # opened now: builtins may be gone by the teardown

        def __del__(self):
            self.file.write("ran")
            self.file.close()

    def main(**kw):
        atexit.register(lambda: open(MARK + ".handler", "w").write("ran"))  # as multiprocessing's and Dask's are
        cli.WITNESS = Witness()
        return command(**kw)

    cli.main = main
    from xrayfeat.cli.entry import run
    run()
""")


def _run(tmp_path, *args):
    script = tmp_path / "entry.py"
    script.write_text(ENTRY)
    return subprocess.run([sys.executable, str(script), str(tmp_path / "mark"), *args], capture_output=True, text=True,
                          timeout=120)


def test_a_command_ends_with_its_status_after_every_exit_handler_and_without_teardown(tmp_path):
    done = _run(tmp_path, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("xrayfeat, version ")  # written to a pipe: flushed before the end
    assert (tmp_path / "mark.handler").read_text() == "ran"  # registered during the command, run before the end
    assert (tmp_path / "mark.teardown").read_text() == ""  # the interpreter's teardown was skipped


def test_bad_input_still_exits_2_in_one_line(tmp_path):
    done = _run(tmp_path, "inspect", str(tmp_path / "missing"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"xrayfeat: error: {tmp_path / 'missing'}: no such folder or CSV file"]
    assert (tmp_path / "mark.handler").read_text() == "ran"


def test_python_dash_m_runs_the_same_entry(tmp_path):
    done = subprocess.run([sys.executable, "-m", "xrayfeat", "inspect", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1


def test_statuses_of_sys_exit():
    from xrayfeat.cli.entry import _status

    assert [_status(None), _status(0), _status(2), _status(143), _status("a message")] == [0, 0, 2, 143, 1]
