"""The public surface: what `import m3bind` offers, and the command line's plain progress lines."""
import io
import subprocess
import sys

from rich.console import Console


def test_top_level_names_import_lazily():
    # Importing m3bind must stay light (the CLI starts with it); the heavy names load on use.
    code = ("import sys, m3bind; assert 'torch' not in sys.modules, 'torch imported eagerly'; "
            "from m3bind import M3Bind, Experiment, DataError, run_pretrain, run_bind, run_distill, run_eval, "
            "run_extend, run_ablation; print(M3Bind.__name__, Experiment.__name__, DataError.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["M3Bind", "Experiment", "DataError"]


def test_unknown_top_level_name_is_an_attribute_error():
    import m3bind
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        m3bind.nope


def test_line_progress_prints_ordered_plain_lines():
    from m3bind.output import LineProgress, progress_display

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200)
    assert isinstance(progress_display(console), LineProgress)
    with progress_display(console) as bar:
        task = bar.add_task("bind", total=20)
        for step in range(1, 21):
            bar.update(task, completed=step, description=f"bind loss {1 / step:.3f}")
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "bind: started"
    # one line per tenth of the run, in order, ending at the total
    counts = [line.split(": ")[1].split()[0] for line in lines[1:]]
    assert counts == [f"{2 * i}/20" for i in range(1, 11)]
    assert "\x1b[" not in buffer.getvalue()  # no terminal control codes in a log
