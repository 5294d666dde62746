"""``kvmpy``'s main() called in the test process, as a user's command line would be."""

from kvmpy.vmm.cli import main


def run_main(capsys, *argv):
    """(exit status, stdout, stderr) of ``kvmpy argv``, whether main returns or exits;
    never a traceback."""
    try:
        status = main(list(argv))
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err
