"""Plain pickles (``pickle.dump``), e.g. NVlabs' StyleGAN2-ADA / StyleGAN3 ``network-snapshot-*.pkl``:
``{"G": ..., "D": ..., "G_ema": ..., "augment_pipe": ..., "training_set_kwargs": ...}``, whose
modules are ``torch_utils.persistence`` objects that carry their own source code and run it when
unpickled. Loaded only under ``--trust-pickle``; without it the refusal names what the file would
import, read from its opcodes without running anything."""

from __future__ import annotations

import pickletools
import warnings
from pathlib import Path

from genentropy_cli.errors import InputError, first_line
from genentropy_cli.models.formats import LoadRequest, ModelFormat, ModelSource, register_format
from genentropy_cli.models.formats.torch_save import loaded_from_content, looks_like_torch_save
from genentropy_cli.models.loaded import LoadedModel
from genentropy_cli.models.pickles import UnimportableClass, renaming_pickle, unimportable_advice
from genentropy_cli.models.usercode import import_paths

__all__ = ["NVLABS_MODULES", "pickle_globals"]

PICKLE_PROTOCOL_MARK = b"\x80"
MAX_SCANNED_OPCODES = 200_000
"""How far the refusal's scan reads (globals sit near the start of a snapshot; tensors follow)."""
NVLABS_MODULES = ("torch_utils", "dnnlib")
"""Top-level modules of NVlabs' repositories that their snapshots import."""
NVLABS_HINT = ("an NVlabs StyleGAN snapshot: its modules carry their own source and need the repository's "
               "torch_utils and dnnlib; pass --code-path with the folder of the StyleGAN2-ADA or StyleGAN3 "
               "repository that trained it")


def looks_like_plain_pickle(source: ModelSource) -> bool:
    """A pickle that is not torch.save's legacy format (whatever order the formats are asked in)."""
    return source.zip_leaves is None and source.head(1) == PICKLE_PROTOCOL_MARK and not looks_like_torch_save(source)


def pickle_globals(file: Path, limit: int = MAX_SCANNED_OPCODES) -> list[str]:
    """``module.name`` of each class or function the pickle would import, in order, read from its
    opcodes (``pickletools.genops``: nothing is imported or run)."""
    found: list[str] = []
    strings: list[str] = []
    memo: dict[int, str] = {}
    memoized, last = 0, None  # MEMOIZE numbers what it stores; ``last``: a string just pushed
    try:
        with file.open("rb") as handle:
            for count, (opcode, argument, _) in enumerate(pickletools.genops(handle)):
                name = opcode.name
                if count >= limit or name == "STOP":
                    break
                if isinstance(argument, str) and "UNICODE" in name:
                    strings.append(argument)
                    last = argument
                    continue
                if name == "MEMOIZE":
                    if last is not None:
                        memo[memoized] = last
                    memoized += 1
                    continue
                if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    if last is not None:
                        memo[int(argument)] = last
                    continue
                last = None
                if name in ("GET", "BINGET", "LONG_BINGET") and int(argument) in memo:
                    last = memo[int(argument)]
                    strings.append(last)
                elif name in ("GLOBAL", "INST"):
                    found.append(str(argument).replace(" ", "."))
                elif name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # a truncated or odd pickle: what was read is what the refusal names
        pass
    return list(dict.fromkeys(found))


def _refusal(file: Path) -> InputError:
    names = pickle_globals(file)
    if any(name.split(".")[0] in NVLABS_MODULES for name in names):
        return InputError(f"{file} is {NVLABS_HINT.split(':')[0]}: loading it runs the code it carries, so it is "
                          f"refused; if you trust it, pass --trust-pickle --code-path STYLEGAN_REPO (the folder "
                          f"holding torch_utils/ and dnnlib/)")
    listed = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
    what = f" naming {listed}" if names else ""
    return InputError(f"{file} is a plain pickle{what}: unpickling it runs code the file names, so it is refused; "
                      "if you trust it, pass --trust-pickle (and --code-path DIR for the code it imports)")


def _unimportable(file: Path, error: UnimportableClass) -> InputError:
    if error.module.split(".")[0] in NVLABS_MODULES:
        return InputError(f"{file} is {NVLABS_HINT}")
    return InputError(unimportable_advice(file, error))


def unpickle(source: ModelSource, request: LoadRequest) -> object:
    """The pickled object (trusted only: it runs the code the file names)."""
    file = source.path
    if not request.trust_pickle:
        raise _refusal(file)
    unpickler = renaming_pickle(request.class_map).Unpickler
    with import_paths(request.code_path), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pickled code's own deprecation noise
        try:
            with file.open("rb") as handle:
                content = unpickler(handle).load()
        except UnimportableClass as error:
            raise _unimportable(file, error) from None
        except ImportError as error:  # raised inside code the pickle carries (NVlabs' persistence)
            raise InputError(f"{file} runs code that imports what is not installed here ({first_line(error)}); "
                             "install it, or add its folder with --code-path DIR") from None
        except Exception as error:
            raise InputError(f"{file} is not a loadable pickle ({first_line(error)})") from None
    return content


def load_plain_pickle(source: ModelSource, request: LoadRequest) -> LoadedModel:
    return loaded_from_content(source.path, unpickle(source, request), True, request, "pickle")


register_format(ModelFormat("pickle", "a plain pickle such as a StyleGAN snapshot (.pkl, --trust-pickle)",
                            looks_like_plain_pickle, load_plain_pickle, runs_code=True, read_tree=unpickle))
