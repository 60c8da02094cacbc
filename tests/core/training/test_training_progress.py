"""Progress display: rich bar on a terminal, plain lines otherwise, nothing for `none`."""

import io

from caramba.training.progress import (
    PlainProgress,
    ProgressDisplay,
    RichProgress,
    format_duration,
    make_progress,
)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drive(display: ProgressDisplay) -> None:
    display.start("run-x", total_steps=20, start_step=0, elapsed_s=0.0)
    for step in range(1, 21):
        display.advance(step)
        if step % 10 == 0:
            display.update(step=step, loss=2.5 - step / 100, lr=3e-4, tokens_per_s=12345.0)
    display.message("step 20: val_loss 2.1000")
    display.close()


def test_plain_prints_one_line_per_update_with_all_fields() -> None:
    stream = io.StringIO()
    _drive(make_progress("plain", stream))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[run-x] step 10/20 loss 2.4000 tok/s 12,345 lr 3.000e-04")
    assert "elapsed 0:00:00" in lines[0] and "eta 0:00:00" in lines[0]
    assert lines[2] == "[run-x] step 20: val_loss 2.1000"


def test_rich_falls_back_to_plain_when_not_a_terminal() -> None:
    assert isinstance(make_progress("rich", io.StringIO()), PlainProgress)
    assert isinstance(make_progress("rich", _Terminal()), RichProgress)


def test_rich_bar_shows_run_and_steps() -> None:
    stream = _Terminal()
    _drive(make_progress("rich", stream))
    out = stream.getvalue()
    assert "run-x" in out and "20/20" in out and "loss 2.3000" in out and "tok/s" in out


def test_none_prints_nothing() -> None:
    stream = io.StringIO()
    display = make_progress("none", stream)
    _drive(display)
    assert stream.getvalue() == ""


def test_format_duration() -> None:
    assert format_duration(3725.9) == "1:02:05"
    assert format_duration(float("nan")) == "-:--:--"
