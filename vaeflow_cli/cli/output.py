"""Results on stdout: text lines, and image or array bytes written whole (``write_all``); an
``--out`` path checked before any work; the run directory of a command without ``--run``. A
stdout that cannot be written is one clear error."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from vaeflow_cli.errors import VaeflowError
from vaeflow_cli.files import can_create_in, nearest_existing


def _out(text: str, nl: bool = True) -> None:
    """Print a result on stdout; a stdout that cannot be written (closed, a full device) is one line."""
    try:
        if sys.stdout is None:
            raise OSError(9, "stdout is closed")
        typer.echo(text, nl=nl)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _stdout_failure(exc) from None


def _stdout_failure(exc: OSError):
    from vaeflow_cli.errors import RuntimeFailure

    return RuntimeFailure(
        f"cannot write the result to stdout ({exc.strerror or exc}); redirect stdout to a writable file, or use --out FILE where the command has it"
    )


def write_all(stream, data: bytes) -> None:
    """Write every byte of ``data`` to a binary stream. An unbuffered stream (python -u,
    PYTHONUNBUFFERED) is a raw file whose write() may take only part (a pipe whose reader left
    after 64 KiB): the rest is written again, so a reader that left is a BrokenPipeError, never a
    silently short result."""
    view = memoryview(data)
    while view:
        n = stream.write(view)
        if n is None:  # a non-blocking stream with no room now
            raise BlockingIOError(11, "stdout would block")
        if n == 0:
            raise OSError(5, "stdout accepted no bytes")
        view = view[n:]


def _write_output(data: bytes, out: str) -> None:
    from vaeflow_cli.files import atomic_write_bytes

    if out == "-":
        try:
            if sys.stdout is None:
                raise OSError(9, "stdout is closed")
            write_all(sys.stdout.buffer, data)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _stdout_failure(exc) from None
    else:
        atomic_write_bytes(Path(out), data)
        _out(out)


def _run_or_default(run: Path | None) -> Path:
    """--run, or the run directory of the embedded default config."""
    if run is not None:
        return run
    from vaeflow_cli.config import files, schema

    return Path(files.embedded_default().get("run", {}).get("dir", schema.DEFAULTS["run"]["dir"]))


def names_a_folder(out: str) -> bool:
    """Whether ``out`` ends in a path separator (``runs/new/``): it names a folder, existing or not."""
    import os

    return out.endswith(tuple(s for s in (os.sep, os.altsep) if s))


def _check_out(out: str | None, *, folder: bool = False, option: str = "--out", example: str = "samples.png") -> None:
    """Refuse an --out that cannot be written BEFORE any work: a directory where a file is
    wanted (an existing one, or a path that ends in a separator), a missing or read-only parent
    folder (tried: ``files.can_create_in``). ``option`` is the option's name in the messages;
    ``example`` a file name for the fix."""
    if out == "-" and sys.stdout is None:
        raise VaeflowError(f"{option} - writes to stdout, which is closed; give {option} FILE or redirect stdout")
    if out is None or out == "-":
        return
    path = Path(out)
    if path.is_dir() and not folder:
        raise VaeflowError(f"{option} {out} is an existing directory; give a file path (e.g. {path / example})")
    if names_a_folder(out) and not folder:
        raise VaeflowError(f"{option} {out} names a folder (it ends in {out[-1]}); give a file path (e.g. {path / example})")
    if path.exists() and not path.is_dir() and folder:
        raise VaeflowError(f"{option} {out} is an existing file; --no-grid writes one PNG per sample into a folder")
    parent = nearest_existing(path if folder and path.is_dir() else path.parent)
    if not parent.is_dir():
        raise VaeflowError(f"{option} {out}: {parent} is not a directory; fix the path")
    if not can_create_in(parent):
        raise VaeflowError(f"{option} {out}: the folder {parent} is not writable; choose a path you may write to")


# What a file extension names, for --out: the commands write the format its extension names, and
# refuse one they cannot write (never PNG bytes in a file named x.npy).
FORMAT_OF_EXTENSION = {
    ".png": "png",
    ".npy": "npy",
    ".npz": "npz",
    ".json": "json",
    ".txt": "table",
    ".toml": "toml",
    ".csv": "csv",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".gif": "gif",
    ".bmp": "bmp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".webp": "webp",
    ".svg": "svg",
    ".pdf": "pdf",
    ".eps": "eps",
    ".pt": "torch",
    ".pth": "torch",
}


def _out_format(
    out: str | None, given: str | None, writes: dict[str, str], *, default: str | None, given_by: str = "--format", option: str = "--out"
) -> str:
    """The format a command writes to ``--out``: ``given`` (the format option) when given, else the
    one ``--out``'s extension names, else ``default`` (None: the extension is required).

    ``writes``: {format: its extension} of the formats the command can write. Refused, before any
    work (VaeflowError): a ``given`` format the command does not write, an extension naming a
    format it does not write, and a ``given`` format that contradicts the extension. ``given_by``
    is how the user gave the format, for the messages (``--format npy``, ``--json``); ``option``
    the option that names the file (``--figure``)."""
    if given is not None and given not in writes:
        raise VaeflowError(f"{given_by} must be one of {', '.join(writes)}, not {given!r}")
    named = None
    if out is not None and out != "-":
        path = Path(out)
        suffix = path.suffix.lower()
        named = FORMAT_OF_EXTENSION.get(suffix)
        choices = " or ".join(f"{path.stem}{ext}" for ext in writes.values())
        if named is not None and named not in writes:
            raise VaeflowError(f"{option} {out}: this command writes {' or '.join(writes)}, not {suffix}; name the file {choices}")
        if named is not None and given is not None and named != given:
            raise VaeflowError(
                f"{given_by} and {option} {out} disagree ({suffix} is {named}); name the file {path.stem}{writes[given]} or leave out {given_by.split()[0]}"
            )
        if named is None and default is None:
            raise VaeflowError(f"{option} {out}: the extension chooses the format; name the file {choices}")
    return given or named or default
