"""A decoder as a format loaded it, with what its files (and the conventions of the code that
wrote it) say about it; every format module returns one (``formats``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["LoadedModel"]


@dataclass
class LoadedModel:
    """A decoder with what its files say about it.

    ``metadata`` holds latent_shape / latent_distribution / output_range / output_select / label_* /
    call_method / call_kwargs, ``origins`` says for each where it came from (metadata, program, spec,
    a convention such as ``StyleGAN convention (G.z_dim)``), ``spec`` is the architecture spec that
    built the decoder (None for formats that carry their code), ``spec_file`` the content of the
    spec file used (``--spec`` or sidecar), if any. ``warnings`` (the user should act) and ``notes``
    (what was chosen for them) go to stderr and into the JSON.
    """

    decoder: Any
    path: str
    format: str
    metadata: dict = field(default_factory=dict)
    origins: dict = field(default_factory=dict)
    spec: dict | None = None
    spec_source: str | None = None
    warnings: list[str] = field(default_factory=list)
    spec_file: dict | None = None
    selection: dict | None = None
    location: str | None = None
    notes: list[str] = field(default_factory=list)
    convention: str | None = None
    """The family whose conventions were recognised (``conventions.py``), e.g. ``stylegan``."""
    call_notes: dict = field(default_factory=dict)
    """Notes that hold only if a call keyword ends up with a value: ``{name: (value, note)}``;
    ``resolve.py`` adds each to ``notes`` once flags have had their say."""

    def describe(self) -> dict:
        description = {"path": self.path, "format": self.format}
        if self.location is not None:
            description["file"] = self.location
        if self.spec_source is not None:
            description["spec_source"] = self.spec_source
        if self.selection:
            description["selected"] = dict(self.selection)
        if self.convention is not None:
            description["convention"] = self.convention
        if self.notes:
            description["notes"] = list(self.notes)
        return description

    def layer(self, entries: dict, origin: str) -> None:
        """Record metadata ``entries`` from ``origin``, over what is already there."""
        for key, value in entries.items():
            self.metadata[key] = value
            self.origins[key] = origin

    def layer_under(self, entries: dict, origin: str) -> None:
        """Record ``entries`` from ``origin`` only where nothing is recorded yet (a convention
        yields to whatever a file says)."""
        self.layer({key: value for key, value in entries.items() if self.metadata.get(key) is None}, origin)
