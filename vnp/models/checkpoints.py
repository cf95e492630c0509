"""Loading pickled checkpoints safely: torch's weights-only unpickler with a per-call allowlist.

Used for the published VirNucPro classifier `.pth` files (`vnp.models.classifier`) and for fair-esm
checkpoints (`vnp.models.esm`). A file that names anything beyond torch's defaults and the allowed
globals is refused before it can run code, with one line that names the file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from vnp.support.errors import InputError
from vnp.support.paths import regular_file


@contextlib.contextmanager
def _allowing(extra_globals: list) -> Iterator[None]:
    """Allow `extra_globals` for weights-only loads inside the block only.

    Entries someone already registered globally are left out, so leaving the block cannot
    remove them. (torch keeps this list per process, not per thread.)
    """
    already = set(torch.serialization.get_safe_globals())
    extra = [g for g in extra_globals if g not in already]
    with torch.serialization.safe_globals(extra):
        yield


def first_line(err: BaseException) -> str:
    """The first line (and, if long, the first sentence) of an exception's message."""
    line = (str(err).strip() or type(err).__name__).splitlines()[0]
    return line.split(". ")[0] if len(line) > 160 else line


def _unpickler_reason(err: pickle.UnpicklingError) -> tuple[bool, str]:
    """(refused, reason) from torch's long 'Weights only load failed' message.

    Refused: the pickle asks for a global or a construction that is not allowed. Otherwise
    (e.g. 'Unsupported operand') the file is just not a checkpoint.
    """
    text = str(err)
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        name = found.group(1) if "." in found.group(1) else f"builtins.{found.group(1)}"  # torch drops it
        return True, f"it references {name}, which could run code"
    found = re.search(r"WeightsUnpickler error:(.*?)(Check the documentation|$)", text, re.DOTALL)
    reason = " ".join(found.group(1).split()) if found else first_line(err)
    if "Only persistent_load of storage" in reason:  # the old format pickles a module's source code
        return True, "it holds a whole module in torch's pre-1.6 file format, which cannot be read safely"
    return any(word in reason for word in ("allowlist", "unrecognized function")), reason


def restricted_load(path: Path, allowed_globals: list, what: str) -> Any:
    """`torch.load(path, weights_only=True)` allowing only `allowed_globals` beyond torch's defaults.

    `allowed_globals` takes classes/functions or `(obj, "module.Name")` pairs, as
    `torch.serialization.safe_globals` does. A missing, corrupt or refused file raises InputError
    with one line naming the file; `what` says what the file should be ("ESM checkpoint").
    """
    regular_file(path, what)  # a FIFO or device would block the read forever
    is_zip = zipfile.is_zipfile(path)
    with _allowing(allowed_globals):
        try:
            if is_zip:  # a static scan names every offending global before anything is built
                unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
                if unsafe:
                    raise InputError(f"{path}: refusing to load: it references {unsafe[0]}, which could run code")
            # mmap: a multi-GB checkpoint is paged in, not copied, while the model is built.
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
        except pickle.UnpicklingError as err:
            refused, reason = _unpickler_reason(err)
            if refused:
                raise InputError(f"{path}: refusing to load: {reason}") from None
            raise InputError(f"{path}: not a readable {what}, truncated or corrupt? ({reason})") from None
        except InputError:
            raise
        except Exception as err:  # garbage makes the unpickler fail in many ways (IndexError, KeyError ...)
            reason = f"{type(err).__name__}: {first_line(err)}"
            raise InputError(f"{path}: not a readable {what}, truncated or corrupt? ({reason})") from None
    check_tensor_sizes(_named_tensors(loaded), path)
    return loaded


def check_tensor_sizes(tensors: Iterator[tuple[str, torch.Tensor]], path: Path) -> None:
    """A tensor cannot hold more bytes than its file: views with stride 0 claim any shape for a few
    bytes, and whatever is built from that shape would allocate it (a memory bomb)."""
    file_size = os.stat(path).st_size
    for name, tensor in tensors:
        claimed = tensor.numel() * tensor.element_size()
        if claimed > file_size:
            raise InputError(f"{path}: {name} claims shape {tuple(tensor.shape)} ({claimed} bytes), more than "
                             f"the file's {file_size} bytes hold")


def _named_tensors(obj: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors in nested dicts, lists and tuples, with dotted names."""
    if isinstance(obj, torch.Tensor):
        yield prefix or "tensor", obj
    elif depth < 8 and isinstance(obj, dict):
        for key, value in obj.items():
            yield from _named_tensors(value, f"{prefix}.{key}" if prefix else str(key), depth + 1)
    elif depth < 8 and isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _named_tensors(value, f"{prefix}[{index}]", depth + 1)
