"""Models on the Hugging Face Hub: ``hf://owner/repo[/file][@revision]`` (optional extra ``hub``).

The file is fetched with ``huggingface_hub`` into its local cache, or found there: the cache
is ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``, and with
``HF_HUB_OFFLINE=1`` nothing is asked of the network (both read when a model is loaded).
Then it loads like a local file, in any format.

Which file: the one named, else ``model.safetensors`` (what ``PyTorchModelHubMixin.save_pretrained``
writes), else the repository's only model file. A folder model (a diffusers model: ``config.json``
naming its class beside ``diffusion_pytorch_model.safetensors``; a BigGAN: ``config.json`` beside
``pytorch_model.bin``) is the repository's top folder or the folder named (``hf://owner/repo/vae``):
its config and weights are fetched and the folder loads as a local one. Its spec: ``--spec``, else ``<file>.yaml`` beside
it, else ``genentropy.yaml`` at the top of the repository. A spec naming a class without
``kwargs:`` takes them from the repository's ``config.json`` (the mixin's record of the
constructor's arguments). The revision may also be written ``hf://owner/repo@revision/file``,
as ``huggingface_hub`` writes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from genentropy_cli.defaults import MAX_SMALL_FILE_BYTES
from genentropy_cli.errors import InputError, first_line
from genentropy_cli.trust import read_bounded

HUB_SCHEME = "hf://"
HUB_INSTALL = "pip install 'genentropy[hub]' (or pip install huggingface_hub)"
MIXIN_WEIGHTS = "model.safetensors"
HUB_SPEC_FILE = "genentropy.yaml"
HUB_CONFIG_FILE = "config.json"
MODEL_SUFFIXES = (".safetensors", ".onnx", ".pt", ".pth", ".pt2", ".ckpt", ".ts")
FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "pytorch_model.bin")
"""The weights of folder models (diffusers, BigGAN), fetched with the folder's config.json."""
OTHER_REPOSITORY_KINDS = ("datasets", "spaces", "buckets", "kernels")
TRUE_VALUES = ("1", "ON", "YES", "TRUE")


def is_hub_url(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(HUB_SCHEME)


@dataclass(frozen=True)
class HubReference:
    """``hf://owner/repo[/file][@revision]`` taken apart."""

    repo_id: str
    filename: str | None = None
    revision: str | None = None


def _usage(url: str, why: str) -> InputError:
    return InputError(f"{url}: {why}; write hf://owner/repo, hf://owner/repo/FILE or hf://owner/repo/FILE@REVISION")


def parse_hub_url(url: str) -> HubReference:
    """Owner and repository, then an optional file path, then ``@revision`` (after the file,
    or after the repository as ``huggingface_hub`` writes it)."""
    body = url[len(HUB_SCHEME):].strip("/")
    owner, _, rest = body.partition("/")
    if owner == "models" and rest.count("/") >= 1:  # the optional kind prefix: hf://models/owner/repo
        owner, _, rest = rest.partition("/")
    if owner in OTHER_REPOSITORY_KINDS:
        raise _usage(url, f"{owner} hold no models")
    repository, _, path = rest.partition("/")
    revision = None
    if "@" in repository:  # owner/repo@revision/file
        repository, _, revision = repository.partition("@")
        if revision == "refs" and path:  # refs/pr/N, refs/convert/NAME
            head, _, path = path.partition("/")
            extra, _, path = path.partition("/")
            revision = f"refs/{head}/{extra}"
    elif "@" in path:  # owner/repo/file@revision
        path, _, revision = path.rpartition("@")
    if not owner or not repository or revision == "" or ".." in PurePosixPath(path).parts:
        raise _usage(url, "not a Hugging Face model reference")
    return HubReference(f"{owner}/{repository}", path or None, revision)


@dataclass(frozen=True)
class HubModel:
    """A Hub model made local: the file, its spec file (if the repository has one; ``spec_label``
    names it in the repository) and the repository's ``config.json`` (None if absent)."""

    url: str
    file: Path
    spec_file: Path | None
    config: dict | None
    spec_label: str | None = None

    def in_terms_of_the_repository(self, message: str) -> str:
        """A loader's message about the cached file, about the repository instead."""
        sidecar = f"put {self.file.with_suffix('.yaml').name} beside it"
        return message.replace(sidecar, f"add {HUB_SPEC_FILE} to the repository").replace(str(self.file), self.url)

    def complete_spec(self, spec: dict | None) -> dict | None:
        """A spec naming a class without kwargs gets ``config.json``'s (PyTorchModelHubMixin's record)."""
        if spec is None or "kwargs" in spec or self.config is None or not ("architecture" in spec or "import" in spec):
            return spec
        return {**spec, "kwargs": dict(self.config)}


def hub_settings() -> tuple[str | None, bool]:
    """(cache directory or None for the library's default, offline), read from the environment now."""
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not cache and os.environ.get("HF_HOME"):
        cache = os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return (os.path.expanduser(cache) if cache else None), flag.upper() in TRUE_VALUES


def _import_hub(url: str) -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise InputError(f"{url} is on the Hugging Face Hub; reading it needs the hub extra: {HUB_INSTALL}") from None
    return huggingface_hub


def _hub_error(url: str, error: Exception, cache: str | None, offline: bool) -> InputError:
    """What went wrong reaching the repository, and what to do."""
    kind = type(error).__name__
    if kind == "RepositoryNotFoundError":
        return InputError(f"{url}: no such repository on the Hub (or it is private: log in with `hf auth login`)")
    if kind == "RevisionNotFoundError":
        return InputError(f"{url}: the repository has no such revision (a branch, tag or commit)")
    if kind == "GatedRepoError":
        return InputError(f"{url}: the repository is gated: accept its terms on the Hub, then `hf auth login`")
    where = cache or "the default cache, ~/.cache/huggingface/hub"
    if offline or kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        return InputError(f"{url} is not in the Hugging Face cache ({where}){' and HF_HUB_OFFLINE is set' if offline else ''}: "
                          "download it once where the Hub can be reached (hf download OWNER/REPO), or point "
                          "HF_HUB_CACHE at the cache that holds it")
    return InputError(f"{url}: the Hub could not be reached ({first_line(error)}); with the model in the local cache, "
                      "set HF_HUB_OFFLINE=1")


REACH_TIMEOUT_SECONDS = 3.0
"""How long the Hub's host may take to accept a connection before it counts as out of reach:
without this check huggingface_hub retries an unreachable host for about 30 s before failing."""


class HubUnreachable(ConnectionError):
    """The Hub's host did not accept a connection within ``REACH_TIMEOUT_SECONDS``."""


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def check_hub_reachable(timeout: float = REACH_TIMEOUT_SECONDS) -> None:
    """Raise ``HubUnreachable`` unless the Hub's host (``HF_ENDPOINT``, else huggingface.co) takes
    a TCP connection within ``timeout`` seconds (a proxy in the environment is trusted instead)."""
    import socket
    from urllib.parse import urlsplit

    endpoint = urlsplit(hub_endpoint())
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # the proxy, not this machine, reaches the host
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=timeout).close()
    except OSError as error:
        raise HubUnreachable(f"{endpoint.hostname}: {error.strerror or error}") from None


def _repository_files(hub: Any, reference: HubReference, cache: str | None,
                      offline: bool) -> tuple[list[str], bool]:
    """The repository's file names: asked of the Hub, else (offline, or the Hub out of reach) read
    from the cached snapshot; and whether the files must come from the cache alone."""
    unreachable: Exception | None = None
    if not offline:
        try:
            check_hub_reachable()
        except HubUnreachable as error:
            unreachable, offline = error, True
    if not offline:
        try:
            return list(hub.HfApi().list_repo_files(reference.repo_id, revision=reference.revision)), False
        except Exception as error:
            if type(error).__name__ in ("RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"):
                raise
            unreachable = error
    try:
        folder = Path(hub.snapshot_download(reference.repo_id, revision=reference.revision, cache_dir=cache,
                                            local_files_only=True))
    except Exception:
        if unreachable is not None:
            raise unreachable from None
        raise
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()), True


def _choose_file(files: list[str], url: str) -> str:
    if MIXIN_WEIGHTS in files:
        return MIXIN_WEIGHTS
    models = [name for name in files if PurePosixPath(name).suffix in MODEL_SUFFIXES]
    if len(models) == 1:
        return models[0]
    if not models:
        raise InputError(f"{url} holds no model file ({', '.join(MODEL_SUFFIXES)}); it holds {', '.join(files[:10])}")
    raise InputError(f"{url} holds several model files ({', '.join(models[:10])}): name one, e.g. {url.split('@')[0]}/"
                     f"{models[0]}")


def fetch_hub_model(url: str) -> HubModel:
    """The model file of ``url`` in the local cache (fetched there unless offline), with its spec and config."""
    reference = parse_hub_url(url)
    hub = _import_hub(url)
    cache, offline = hub_settings()
    try:
        files, cached_only = _repository_files(hub, reference, cache, offline)
        folder = _model_folder(files, reference.filename)
        if folder is not None:
            return _fetch_folder(hub, reference, folder, files, cache, cached_only, url)
        filename = reference.filename or _choose_file(files, url)
        if filename not in files:
            raise InputError(f"{url}: the repository has no file {filename}; it holds {', '.join(files[:10])}")

        def fetch(name: str) -> Path:
            return Path(hub.hf_hub_download(reference.repo_id, name, revision=reference.revision, cache_dir=cache,
                                            local_files_only=cached_only))

        file = fetch(filename)
        sidecar = PurePosixPath(filename).with_suffix(".yaml").as_posix()
        spec_name = next((name for name in (sidecar, HUB_SPEC_FILE) if name in files and name != filename), None)
        spec_file = fetch(spec_name) if spec_name else None
        config_file = fetch(HUB_CONFIG_FILE) if HUB_CONFIG_FILE in files else None
    except InputError:
        raise
    except Exception as error:
        raise _hub_error(url, error, cache, offline) from None
    label = f"{HUB_SCHEME}{reference.repo_id}/{spec_name}" + (f"@{reference.revision}" if reference.revision else "")
    return HubModel(url, file, spec_file, _read_config(config_file, url) if config_file else None,
                    label if spec_name else None)


def _model_folder(files: list[str], named: str | None) -> str | None:
    """The folder of a folder model ("" for the repository's top) named by ``named``, or None."""
    prefix = f"{named.strip('/')}/" if named else ""
    if named and named in files:
        return None  # a file
    if f"{prefix}{HUB_CONFIG_FILE}" in files and any(f"{prefix}{weights}" in files for weights in FOLDER_WEIGHTS):
        return prefix
    return None


def _fetch_folder(hub: Any, reference: HubReference, folder: str, files: list[str], cache: str | None,
                  offline: bool, url: str) -> HubModel:
    """A folder model's config and weights in the local cache; the model is the folder."""
    wanted = [f"{folder}{HUB_CONFIG_FILE}", *(f"{folder}{weights}" for weights in FOLDER_WEIGHTS),
              f"{folder}{HUB_SPEC_FILE}"]
    fetched = [Path(hub.hf_hub_download(reference.repo_id, name, revision=reference.revision, cache_dir=cache,
                                        local_files_only=offline)) for name in wanted if name in files]
    spec = f"{folder}{HUB_SPEC_FILE}"
    return HubModel(url, fetched[0].parent, fetched[0].parent / HUB_SPEC_FILE if spec in files else None, None,
                    f"{HUB_SCHEME}{reference.repo_id}/{spec}" if spec in files else None)


def _read_config(file: Path, url: str) -> dict:
    data = read_bounded(file, f"{HUB_CONFIG_FILE} of {url}", MAX_SMALL_FILE_BYTES)  # the trust rule: stat first
    try:
        config = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise InputError(f"{url}: its {HUB_CONFIG_FILE} is not readable JSON ({first_line(error)})") from None
    if not isinstance(config, dict):
        raise InputError(f"{url}: its {HUB_CONFIG_FILE} is not a mapping of constructor arguments")
    return config
