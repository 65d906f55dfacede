"""One CLI dialect: the same option name for the same thing in every sub-command, old spellings
kept for one release with a one-line deprecation warning, examples in every ``--help``."""

import argparse
import errno
import io

import pytest

from convattn import cli
from convattn.cli import _options
from convattn.exceptions import ConfigError, ConvattnError, UnknownOptionError


def _leaves(parser, prog=()):
    """(command words, parser) of every sub-command that runs something (``bench layers``, not ``bench``)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(prog), parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, (*prog, name))


BUILD_PARSER = cli.build_parser
PARSER = cli.build_parser()
COMMANDS = dict(_leaves(PARSER))
# where each shared option must exist (more may have it; none may spell it differently)
EXPECTED = {
    "--device": {"train", "eval", "predict", "demo", "viz", "bench layers", "bench models", "compare"},
    "--batch-size": {"train", "eval", "bench layers", "bench models", "compare"},
    "--out": {"train", "eval", "demo", "viz", "report", "compare"},
    "--num-images": {"eval", "viz", "report"},
    "--image-size": {"train", "bench layers", "bench models", "compare"},
    "--progress": {"train", "bench layers", "bench models"},
}
OLD_SPELLINGS = {"--batch", "--size", "--count"}


def _option(parser, flag):
    return next((a for a in parser._actions if flag in a.option_strings), None)


def _default(command, action):
    if action.default is not argparse.SUPPRESS:
        return action.default
    from convattn.engine import TrainConfig  # train's flags default to the TrainConfig field

    return getattr(TrainConfig(), action.dest)


def test_every_command_is_covered():
    assert {"list", "train", "eval", "predict", "demo", "bench layers", "bench models", "viz", "report",
            "kernels", "compare"} <= set(COMMANDS)


@pytest.mark.parametrize("flag", sorted(EXPECTED))
def test_shared_options_exist_where_expected(flag):
    have = {name for name, p in COMMANDS.items() if _option(p, flag) is not None}
    assert EXPECTED[flag] <= have, f"{flag} missing from {sorted(EXPECTED[flag] - have)}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_same_meaning_and_defaults(name):
    p = COMMANDS[name]
    device = _option(p, "--device")
    if device is not None:
        assert _default(name, device) == "auto" and "auto" in (device.help or "") + str(device.metavar or "")
        if device.choices is not None:
            assert tuple(device.choices) == _options.DEVICES
    for flag, dest in (("--batch-size", "batch_size"), ("--num-images", "num_images"), ("--image-size", "image_size")):
        action = _option(p, flag)
        if action is not None and name != "train":
            assert action.dest == dest and action.metavar in ("N", "PX")
    out = _option(p, "--out")
    if out is not None:
        assert not out.required and ("default" in out.help or "[" in out.help)
    progress = _option(p, "--progress")
    if progress is not None:
        assert "--no-progress" in progress.option_strings
    for action in p._actions:
        if OLD_SPELLINGS & set(action.option_strings):
            assert action.help is argparse.SUPPRESS, f"{name}: {action.option_strings} is shown in --help"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_has_examples(name):
    p = COMMANDS[name]
    assert p.epilog and p.epilog.startswith("examples:"), f"convattn {name} --help has no examples"
    head = name.split()[0]
    assert sum(line.strip().startswith(f"convattn {head}") for line in p.epilog.splitlines()) >= 2
    assert p.formatter_class is argparse.RawDescriptionHelpFormatter


DEPRECATED = [
    (["bench", "layers"], "--batch", "3", "batch_size", 3, "--batch-size"),
    (["bench", "layers"], "--size", "7", "image_size", 7, "--image-size"),
    (["bench", "models"], "--batch", "3", "batch_size", 3, "--batch-size"),
    (["bench", "models"], "--size", "64", "image_size", 64, "--image-size"),
    (["eval", "RUN"], "--size", "5", "num_images", 5, "--num-images"),
    (["viz", "RUN"], "--count", "4", "num_images", 4, "--num-images"),
    (["report", "RUN"], "--count", "2", "num_images", 2, "--num-images"),
]


@pytest.mark.parametrize("words, old, value, dest, parsed, new", DEPRECATED, ids=lambda v: str(v))
def test_old_spelling_parses_and_warns(words, old, value, dest, parsed, new, capsys):
    args = PARSER.parse_args([*words, old, value])
    assert getattr(args, dest) == parsed
    prog = "convattn " + " ".join(w for w in words if w != "RUN")
    assert capsys.readouterr().err == f"{prog}: {old} is deprecated; use {new}\n"
    assert getattr(PARSER.parse_args([*words, new, value]), dest) == parsed
    assert capsys.readouterr().err == ""


def test_defaults_without_old_spelling():
    args = PARSER.parse_args(["bench", "layers"])
    assert (args.batch_size, args.image_size, args.device, args.progress) == (8, 56, "auto", None)
    args = PARSER.parse_args(["bench", "models"])
    assert (args.batch_size, args.image_size) == (32, 224)
    assert (PARSER.parse_args(["viz", "RUN"]).num_images, PARSER.parse_args(["report", "RUN"]).num_images) == (16, 8)
    assert PARSER.parse_args(["viz", "RUN"]).out is None  # figures/ in the run directory, resolved when run
    assert PARSER.parse_args(["report", "RUN"]).out == "report.html"
    assert PARSER.parse_args(["eval", "RUN"]).num_images is None


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    auto = argparse.Namespace(progress=None)
    assert _options.show_progress(auto, _Stream(True)) and not _options.show_progress(auto, _Stream(False))
    assert _options.show_progress(argparse.Namespace(progress=True), _Stream(False))
    assert not _options.show_progress(argparse.Namespace(progress=False), _Stream(True))
    monkeypatch.setenv("CI", "true")
    assert not _options.show_progress(auto, _Stream(True))


def test_bench_draws_no_bar_into_a_pipe(monkeypatch, capsys):
    monkeypatch.setenv("CONVATTN_EXTENSIONS", "0")
    assert cli.main(["bench", "layers", "--layers", "se", "--channels", "8", "--image-size", "5", "--batch-size", "1",
                     "--repeats", "1", "--warmup", "0", "--no-memory", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "5x5, batch 1" in captured.out and captured.err == ""


def _raise(args):
    raise args.exc


@pytest.mark.parametrize("exc", [
    UnknownOptionError("attention layer 'se' got unknown option bogus=1; it accepts rd_ratio"),
    ValueError("unknown attention layer 'sse'; did you mean 'se'? (convattn.list_attn() or `convattn list layers` "
               "lists all 30)"),
])
def test_errors_print_one_line_and_exit_2(exc, monkeypatch, capsys):
    build = cli.build_parser

    def parser():
        p = build()
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        sub.add_parser("fail").set_defaults(func=_raise, exc=exc)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    assert cli.main(["fail"]) == 2
    err = capsys.readouterr().err
    assert err == f"convattn fail: error: {exc}\n"


def _run_failing(exc, monkeypatch):
    """Run ``convattn fail``, a command that raises ``exc``."""

    def parser():
        p = BUILD_PARSER()
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        sub.add_parser("fail").set_defaults(func=_raise, exc=exc)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    return cli.main(["fail"])


@pytest.mark.parametrize("exc, line", [
    (OSError(errno.ENOSPC, "No space left on device", "runs/a/last.pt"), "runs/a/last.pt: disk full"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/out"), "/ro/out: read-only file system"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "/root/x: permission denied"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "file/sub"), "file/sub: not a directory"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "report.html"), "report.html: is a directory"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "gone.pt"), "gone.pt: not found"),
    (OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b"), "a -> b: Invalid cross-device link"),
    (FileNotFoundError("checkpoint 'x' does not exist"), "checkpoint 'x' does not exist"),
    (ConfigError("Caught ConfigError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                 "  File \"x.py\", line 1, in f\nconvattn.exceptions.ConfigError: folder:x: 'a.png' is not a readable "
                 "image"), "folder:x: 'a.png' is not a readable image"),
    (PermissionError("Caught PermissionError in DataLoader worker process 1.\nOriginal Traceback (most recent call "
                     "last):\nPermissionError: [Errno 13] Permission denied: 'b.png'"),
     "[Errno 13] Permission denied: 'b.png'"),
    (MemoryError("Unable to allocate 71.1 PiB for an array"), "not enough memory for this run (Unable to allocate"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 4000000000000000 bytes."), "not enough memory for this run (can't allocate "
                                                                "memory: you tried to allocate 4000000000000000"),
])
def test_os_and_memory_errors_print_one_line_and_exit_2(exc, line, monkeypatch, capsys):
    assert _run_failing(exc, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"convattn fail: error: {line}") and err.count("\n") == 1, err


def test_errors_carry_their_exit_status_and_debug_shows_the_traceback(monkeypatch, capsys):
    class Diverged(ConvattnError, ArithmeticError):
        exit_status = 3

    assert _run_failing(Diverged("loss is nan at step 4"), monkeypatch) == 3
    assert capsys.readouterr().err == "convattn fail: error: loss is nan at step 4\n"
    with pytest.raises(RuntimeError, match="a bug"):  # not a user error: the traceback
        _run_failing(RuntimeError("a bug"), monkeypatch)
    monkeypatch.setenv("CONVATTN_DEBUG", "1")
    with pytest.raises(OSError):
        _run_failing(OSError(errno.ENOSPC, "No space left on device", "x"), monkeypatch)


@pytest.mark.parametrize("argv, words", [
    (["--attention", "sse"], ["unknown attention layer 'sse'", "did you mean", "`convattn list layers`"]),
    (["--model", "nope"], ["unknown model 'nope'", "`convattn list models`"]),
    (["--attention", "se", "--attn-kwargs", "bogus=1"], ["unknown option bogus=1", "it accepts rd_ratio"]),
])
def test_unknown_names_and_options_from_the_command_line(argv, words, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONVATTN_EXTENSIONS", "0")
    assert cli.main(["train", *argv, "--epochs", "1", "--train-size", "8", "--val-size", "8", "--test-size", "8",
                     "--no-progress", "--no-tensorboard", "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convattn train: error: ") and len(err.splitlines()) == 1
    assert all(w in err for w in words), err
