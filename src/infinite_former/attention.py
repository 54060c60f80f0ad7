"""LongTermAttention: continuous attention over the unbounded memory (paper §2-4).

    out, state = ltm(queries, new_vectors, state)

1. new_vectors (batch, L, e) are gated (k ⊙ sigmoid(Conv1d(k))) and absorbed
   into the memory: contraction by τ, M samples, refit of B (memory.py).
2. Keys and values come from the coefficients: K = B W_K, V = B W_V.
3. Per head h and query i: s = K_h q_{h,i} / √d ∈ ℝ^N, μ = sigmoid(w_μᵀ s),
   σ² = softplus(w_σᵀ s) (w_μ, w_σ ∈ ℝ^N shared by the heads).
4. z = V_hᵀ E_p[ψ] with p = 𝒩(μ, σ²) (or the continuous sparsemax), then W_O.

The state is passed in and returned, never stored on the module.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .basis import GaussianBasis, check_layout
from .continuous import NORMALIZERS
from .memory import SCHEDULES, LTMState, UpdateRecord, bin_mass, check_tau, update_memory
from .utils import (
    autocast_off,
    check_field_types,
    check_int,
    config_from_dict,
    describe,
    require_fields,
)

# Saved configs carry ``format_version``. 0.2 (no version) held the memory's settings flat; from 0.3 they
# are nested under ``ltm``. A setting added later names the format it arrives in (``since``): the
# format version is the newest of them, a file of an older version is read with that setting at its
# default (which must be the behaviour before it existed), and a newer or unknown version is refused.
LEGACY_FORMAT = "0.2"
FIRST_FORMAT = "0.3"


def _setting(
    default: Any, doc: str, symbol: str | None = None, cli: bool = True, since: str = FIRST_FORMAT
) -> Any:
    """A memory setting: its default, its documentation (CLI help, docs), its paper symbol and the
    saved-config format it arrived in. cli=False: no command-line flag is generated for it."""
    return field(default=default, metadata={"doc": doc, "symbol": symbol, "cli": cli, "since": since})


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


AUTO_WIDTHS = (1.0, 2.5)  # widths="auto": σ = c / N for each c (rule from benchmarks/reach.py)


def auto_widths(num_basis: int) -> tuple[float, float]:
    """RBF widths that scale with N: σ ∈ {1/N, 2.5/N} (about ½ and 1¼ of the spacing 2/N of the N/2
    centres per width; {0.002, 0.005} at N = 512).

    The rule is benchmarks/reach.py's (results/reach_cpu.json, uniform samples): among
    c·{1, 2.5}/N for c = ½, 1, 2 and the paper's fixed {0.01, 0.05} and {0.005, 0.01}, c = 1 gives
    the lowest or near-lowest error at every age for smooth signals under every schedule at
    N = 128 and 512. Narrower widths (c = ½, or the GPT-2 {0.005, 0.01} at N = 128) leave gaps
    between the centres, and under the ``uniform_time`` / ``power`` schedules, whose many
    near-identity contractions (τ_k → 1) compound the refit's error, the signal blows up
    (relative errors of 10³ and more); c = 1 stays stable.
    """
    check_int("num_basis", num_basis, minimum=2, symbol="N")
    return tuple(c / num_basis for c in AUTO_WIDTHS)


@dataclass
class LTMConfig:
    """The hyperparameters of the long-term memory: the one place each is declared, validated and
    documented (paper symbols in brackets; the fields' metadata hold their help text).

    d_model (e) and n_heads (H) come from the model that holds the memory: the host configs
    (ModelConfig, hf MemoryConfig, InfiniteGPT2Config, SortSettings) keep a host-independent
    LTMConfig (both None) in their ``ltm`` field and ``bind`` it to their sizes.
    LongTermAttention needs both set. Defaults follow the official GPT-2 configuration:
    N = M = 512, τ = 0.5, widths {0.005, 0.01}, λ = 0.5, D = 128 bins, σ² >= 1e-4, σ₀ = 0.05.

    Beyond the paper (its behaviour is the default): ``schedule`` chooses τ at each update
    (``fixed``: the paper's τ; ``uniform_time``: τ_k = n_old / (n_old + L), every absorbed token keeps
    an equal share of [0, 1]; ``power``: τ_k = (n_old / (n_old + L))^p; see memory.contraction_tau),
    ``power`` is p, and ``widths="auto"`` scales the RBF widths with N (``auto_widths``). The two
    non-fixed schedules refuse widths below 1/N: narrower ones make their repeated refits diverge.
    """

    d_model: int | None = field(default=None, metadata={"doc": "e: the host model's width", "host": True})
    n_heads: int | None = field(default=None, metadata={"doc": "H: the host model's heads", "host": True})
    num_basis: int = _setting(512, "basis functions of the long-term memory", "N")
    num_samples: int | None = _setting(None, "samples of the old signal per update (None or absent: N)", "M")
    tau: float = _setting(0.5, "share of [0, 1] given to the contracted old memory", "τ")
    widths: tuple[float, ...] | str = _setting(
        (0.005, 0.01), "widths σ_k of the Gaussian RBFs, comma-separated, or 'auto' (1/N, 2.5/N)"
    )
    ridge_lambda: float = _setting(0.5, "ridge penalty of the fit of B", "λ")
    edge_padding: bool = _setting(False, "pad the signal's ends before the fit (on | off)")
    sticky: bool = _setting(
        True, "sticky memories: sample the old signal where attention went, else uniformly"
    )
    num_bins: int = _setting(128, "bins of the sticky memories' attention histogram", "D")
    normalizer: str = _setting("softmax", "continuous softmax (Gaussian densities) or sparsemax")
    min_sigma2: float = _setting(1e-4, "floor of the densities' variance σ²")
    kl_sigma0: float = _setting(0.05, "width of the regularizer's target: KL(𝒩(μ, σ²) ‖ 𝒩(μ, σ₀²))", "σ₀")
    kl_weight: float = _setting(1e-6, "weight of the KL regularizer in the training loss (0: off)")
    gate: bool = _setting(True, "gate the new vectors: k ⊙ sigmoid(Conv1d(k)) (on | off)")
    zero_init_output: bool = _setting(
        False, "start W_O at 0, so that the memory adds nothing at first", cli=False
    )
    check_finite: bool = _setting(True, "reject NaN / Inf inputs with a ValueError", cli=False)
    schedule: str = _setting(
        "fixed",
        "contraction schedule: fixed (the paper's τ), uniform_time (τ_k = n_old / (n_old + L)) or "
        "power (τ_k = (n_old / (n_old + L))^p)",
        since="0.4",
    )
    power: float = _setting(2.0, "exponent of the power schedule (> 0; 1 is uniform_time)", "p", since="0.4")

    def __post_init__(self) -> None:
        check_field_types(self)  # a wrong type is a ValueError naming the field, before any check below
        for name in HOST_FIELDS:
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        if self.bound and self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if isinstance(self.widths, str) and self.widths != "auto":
            raise ValueError(f"widths must be a sequence of floats or 'auto', got {self.widths!r}")
        widths = check_layout(self.num_basis, self.basis_widths)  # N, widths: the RBF layout's checks
        if self.num_samples is not None:
            check_int("num_samples", self.num_samples, symbol="M")
        check_int("num_bins", self.num_bins, symbol="D")
        check_tau(self.tau)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.schedule != "fixed" and min(widths) * self.num_basis < 1 - 1e-9:
            raise ValueError(
                f"schedule {self.schedule!r} needs RBF widths >= 1/N = {1 / self.num_basis:.4g}, got "
                f"{min(widths):.4g}: narrower widths make its repeated refits diverge "
                "(benchmarks/reach.py); use widths='auto'"
            )
        if not (0 < self.power < math.inf):
            raise ValueError(
                f"power (exponent p of the 'power' schedule) must be > 0 and finite, got {self.power!r}"
            )
        for name in ("ridge_lambda", "min_sigma2", "kl_sigma0"):
            value = getattr(self, name)
            if not (value > 0) or not math.isfinite(value):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not (self.kl_weight >= 0) or not math.isfinite(self.kl_weight):
            raise ValueError(f"kl_weight must be a finite number >= 0, got {self.kl_weight!r}")
        if self.normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {sorted(NORMALIZERS)}, got {self.normalizer!r}")

    @property
    def basis_widths(self) -> tuple[float, ...]:
        """The RBF widths σ_k in use: ``widths``, or ``auto_widths(N)`` for ``"auto"``."""
        return auto_widths(self.num_basis) if self.widths == "auto" else self.widths

    @property
    def bound(self) -> bool:
        """True once the host's d_model and n_heads are set."""
        return self.d_model is not None and self.n_heads is not None

    @property
    def samples(self) -> int:
        """M: num_samples, or N when it is None."""
        return self.num_basis if self.num_samples is None else self.num_samples

    def bind(self, d_model: int, n_heads: int, **changes: Any) -> LTMConfig:
        """This config for a host of width d_model with n_heads heads (plus other changes)."""
        return replace(self, d_model=d_model, n_heads=n_heads, **changes)

    def settings(self) -> dict[str, Any]:
        """The host-independent settings (every field but d_model, n_heads): the saved ``ltm`` form."""
        d = {name: getattr(self, name) for name in SETTINGS}
        if not isinstance(self.widths, str):
            d["widths"] = list(self.widths)
        return d

    def to_dict(self) -> dict[str, Any]:
        """The settings, plus d_model and n_heads when they are set."""
        host = {name: getattr(self, name) for name in HOST_FIELDS if getattr(self, name) is not None}
        return {**host, **self.settings()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], what: str = "ltm", version: str | None = None) -> LTMConfig:
        """Read a saved LTMConfig of format ``version`` (default: the current one): every setting that
        version defines must be there (d_model, n_heads may be), no other key; a missing, unknown or
        mistyped field is a ValueError naming it. Settings added after ``version`` take their defaults."""
        if not isinstance(d, dict):
            raise ValueError(f"{what} must be a JSON object of LTMConfig fields, got {d!r}")
        version = version or FORMAT_VERSION
        require_fields(d, [s for s in SETTINGS if _version(SINCE[s]) <= _version(version)], what)
        return config_from_dict(cls, d)


HOST_FIELDS = tuple(f.name for f in fields(LTMConfig) if f.metadata.get("host"))
SETTINGS = tuple(f.name for f in fields(LTMConfig) if not f.metadata.get("host"))
SINCE = {
    f.name: f.metadata.get("since", FIRST_FORMAT) for f in fields(LTMConfig) if not f.metadata.get("host")
}
FORMAT_VERSION = max([FIRST_FORMAT, *SINCE.values()], key=_version)
FORMATS = (LEGACY_FORMAT, *sorted({FIRST_FORMAT, *SINCE.values()}, key=_version))


def saved_format(d: Any, what: str) -> str:
    """The format version of a saved config dict (0.2 when it has none); refuses unknown versions."""
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(d).__name__}")
    version = d.get("format_version", LEGACY_FORMAT)
    if version not in FORMATS:
        raise ValueError(
            f"{what} has format_version {version!r}, which this version of infinite-former cannot read "
            f"(it reads {', '.join(FORMATS)})"
        )
    return version


def split_settings(kw: dict[str, Any], prefix: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat keywords -> (LTMConfig settings, the rest): ``prefix + name`` is setting ``name``."""
    mine = {k: v for k, v in kw.items() if k.startswith(prefix) and k[len(prefix) :] in SETTINGS}
    return {k[len(prefix) :]: v for k, v in mine.items()}, {k: v for k, v in kw.items() if k not in mine}


# ----------------------------------------------------------------------------- hosts of an LTMConfig
# A host config (the LM's ModelConfig, the Hugging Face MemoryConfig, InfiniteGPT2Config, the sort
# settings) holds the memory's settings in one field, ``ltm``, and adds only its own fields. Saved, it
# is {"format_version": "0.3", <its own fields>, "ltm": {<every LTMConfig setting>}}; 0.2 files held
# the settings flat, each host under its own names, which its ``legacy`` table maps to LTMConfig's.


# LTMConfig's 0.2 defaults (0.2 had no kl_weight in it: every host had one, default 1e-6). A host's
# 0.2 defaults are these with its own presets; they fill what a 0.2 file or 0.2 keywords leave out.
LTM_DEFAULTS_02: dict[str, Any] = {
    "num_basis": 512,
    "num_samples": 512,
    "tau": 0.5,
    "widths": (0.005, 0.01),
    "ridge_lambda": 0.5,
    "edge_padding": False,
    "sticky": True,
    "num_bins": 128,
    "normalizer": "softmax",
    "min_sigma2": 1e-4,
    "kl_sigma0": 0.05,
    "kl_weight": 1e-6,
    "gate": True,
    "zero_init_output": False,
    "check_finite": True,
}


def host_ltm(value: LTMConfig | dict[str, Any] | None, preset: dict[str, Any], what: str) -> LTMConfig:
    """A host's ``ltm`` field: an LTMConfig as it is, or a dict of settings on top of the host's preset."""
    if isinstance(value, LTMConfig):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an LTMConfig or a dict of its settings, got {type(value).__name__}")
    unknown = sorted(set(value) - set(SETTINGS))
    if unknown:
        raise ValueError(f"{what}: unknown LTMConfig settings {unknown}; known: {list(SETTINGS)}")
    return LTMConfig(**{**preset, **value})


def legacy_keywords(legacy: dict[str, str], defaults_02: dict[str, Any]) -> Callable[[type], type]:
    """Class decorator: the host still accepts its 0.2 flat keywords (``legacy``: old name -> LTMConfig
    setting), with a DeprecationWarning; they apply on top of the 0.2 defaults, as in 0.2. Reading
    an old attribute (``config.ltm_num_basis``) also still works, with a DeprecationWarning."""

    def wrap(cls: type) -> type:
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kw: Any) -> None:
            old = {k: kw.pop(k) for k in list(kw) if k in legacy}
            if old:
                warnings.warn(
                    f"{cls.__name__}({', '.join(old)}=...) is deprecated since 0.3: the memory settings "
                    f"are one field, {cls.__name__}(ltm=LTMConfig(...) or ltm={{...}})",
                    DeprecationWarning,
                    stacklevel=2,
                )
                base = kw.get("ltm")
                base = base.settings() if isinstance(base, LTMConfig) else {**defaults_02, **(base or {})}
                kw["ltm"] = {**base, **{legacy[k]: v for k, v in old.items()}}
            init(self, *args, **kw)

        def __getattr__(self: Any, name: str) -> Any:  # reached only when the normal lookup fails
            if name in legacy and "ltm" in self.__dict__:
                warnings.warn(
                    f"{cls.__name__}.{name} is deprecated since 0.3: read {cls.__name__}.ltm.{legacy[name]}",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(self.ltm, legacy[name])
            raise AttributeError(f"{cls.__name__!r} object has no attribute {name!r}")

        cls.__init__ = __init__
        cls.__getattr__ = __getattr__
        return cls

    return wrap


def read_host_dict(
    d: Any,
    own_fields: tuple[str, ...] | list[str],
    legacy: dict[str, str],
    defaults_02: dict[str, Any],
    what: str,
) -> dict[str, Any]:
    """A saved host config as constructor keywords, ``ltm`` an LTMConfig: checks the format version,
    converts 0.2 (flat settings under the host's legacy names, over the 0.2 defaults), and requires
    every field the format defines (a missing one is a ValueError naming it)."""
    version = saved_format(d, what)
    d = dict(d)
    d.pop("format_version", None)
    if version == LEGACY_FORMAT:
        if "ltm" in d:
            raise ValueError(
                f"{what} has an 'ltm' field but no format_version: not a 0.2 file, nor a 0.3 one"
            )
        missing = sorted(set(legacy) - set(d))
        if missing:
            raise ValueError(f"{what} (format 0.2) lacks the field(s) {missing}")
        defaults = {f.name: f.default for f in fields(LTMConfig) if f.name in SETTINGS}  # settings after 0.2
        d["ltm"] = {**defaults, **defaults_02, **{legacy[k]: d.pop(k) for k in legacy if k in d}}
        version = FORMAT_VERSION  # converted: complete
    require_fields(d, list(own_fields), what)
    d["ltm"] = LTMConfig.from_dict(d["ltm"], f"{what}.ltm", version)
    return d


@dataclass(frozen=True)
class MemoryProjections:
    """The projections of one memory state B that every read of it shares.

    values:        V = B W_V per head, (batch, H, N, d), in the queries' dtype.
    score_weights: W_{Q,h}ᵀ (B W_K)ᵀ [w_μ, w_σ] per head, (batch, e, H·2), in >= float32.

    They change only when B does (once per absorbed block), so token-by-token decoding
    computes them once per block. Tied to the weights they were computed with.
    """

    values: Tensor
    score_weights: Tensor

    def select(self, rows: Tensor) -> MemoryProjections:
        return MemoryProjections(self.values[rows], self.score_weights[rows])

    def detach(self) -> MemoryProjections:
        return MemoryProjections(self.values.detach(), self.score_weights.detach())

    def to(self, *args, **kwargs) -> MemoryProjections:
        return MemoryProjections(self.values.to(*args, **kwargs), self.score_weights.to(*args, **kwargs))


@dataclass(frozen=True)
class ReadRecord:
    """What one memory read did (``return_record=True``): each query's density 𝒩(μ, σ²) (or the
    sparsemax parabola with these moments) over [0, 1].

    mu, sigma2: (batch, H, q) the μ, σ² the read used, detached, in >= float32; valid: (batch, q)
    bool, the queries that counted (the row's memory is not empty, and query_mask).
    """

    mu: Tensor
    sigma2: Tensor
    valid: Tensor


@dataclass
class LTMRecord:
    """What one layer's long-term memory did in one call, in order: its absorptions (an
    :class:`~infinite_former.memory.UpdateRecord` each; ``absorbed`` says which rows took it), then
    its read (None: not read)."""

    updates: list[UpdateRecord] = field(default_factory=list)
    read: ReadRecord | None = None


def gaussian_kl(sigma2: Tensor, sigma0: float) -> Tensor:
    """KL(𝒩(μ, σ²) ‖ 𝒩(μ, σ₀²)) = ½(σ²/σ₀² - log(σ²/σ₀²) - 1), elementwise."""
    ratio = sigma2 / sigma0**2
    return 0.5 * (ratio - torch.log(ratio) - 1.0)


class LongTermAttention(nn.Module):
    """Continuous attention over an unbounded long-term memory (the ∞-former LTM)."""

    def __init__(self, config: LTMConfig) -> None:
        super().__init__()
        if not config.bound:
            raise ValueError(
                "LongTermAttention needs an LTMConfig with d_model and n_heads set (LTMConfig.bind)"
            )
        self.config = config
        e, n = config.d_model, config.num_basis
        self.head_dim = e // config.n_heads
        self.basis = GaussianBasis(n, config.basis_widths)
        self.normalizer = NORMALIZERS[config.normalizer](self.basis)
        self.query = nn.Linear(e, e, bias=False)
        self.key = nn.Linear(e, e, bias=False)
        self.value = nn.Linear(e, e, bias=False)
        self.out = nn.Linear(e, e)
        self.mu_proj = nn.Linear(n, 1)  # w_μ, shared across heads
        self.sigma_proj = nn.Linear(n, 1)  # w_σ
        self.gate = nn.Conv1d(e, e, kernel_size=3, padding=1) if config.gate else None
        if config.zero_init_output:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    # ----------------------------------------------------------------- state

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> LTMState:
        """An empty memory for batch_size streams."""
        c = self.config
        return LTMState.empty(batch_size, c.num_basis, c.d_model, c.num_bins, device, dtype)

    def update(
        self,
        state: LTMState,
        new_vectors: Tensor,
        generator: torch.Generator | None = None,
        *,
        return_record: bool = False,
    ) -> LTMState | tuple[LTMState, UpdateRecord]:
        """Gate (optional) and absorb new_vectors (batch, L, e) into the memory; with return_record,
        also the UpdateRecord of the absorption (its vectors: the gated ones, as fit)."""
        x = new_vectors
        if self.gate is not None and x.shape[1] > 0:
            x = x * torch.sigmoid(self.gate_logits(x))
        c = self.config
        return update_memory(
            state,
            x,
            self.basis,
            num_samples=c.samples,
            tau=c.tau,
            ridge_lambda=c.ridge_lambda,
            edge_padding=c.edge_padding,
            sticky=c.sticky,
            generator=generator,
            schedule=c.schedule,
            power=c.power,
            return_record=return_record,
        )

    def gate_logits(self, x: Tensor) -> Tensor:
        """Conv1d_{e→e, kernel 3}(x) over the L positions: (batch, L, e) -> (batch, L, e).

        Same numbers as self.gate(x.transpose(1, 2)).transpose(1, 2), computed as one
        (batch·L, 3e) × (3e, e) matmul over the three shifted copies of x, which is
        faster than a channels-first convolution and needs no transposes.
        """
        assert self.gate is not None
        length = x.shape[1]
        padded = F.pad(x, (0, 0, 1, 1))  # (batch, L + 2, e)
        window = torch.cat([padded[:, k : k + length] for k in range(3)], dim=-1)  # (batch, L, 3e)
        weight = self.gate.weight.permute(0, 2, 1).reshape(self.gate.out_channels, -1)  # (e, 3e)
        return F.linear(window, weight, self.gate.bias)

    # ------------------------------------------------------------- attention

    def projections(self, state: LTMState, dtype: torch.dtype | None = None) -> MemoryProjections:
        """What every read of one memory state needs from B, computed once (e.g. once per block).

        V = B W_V per head, and W_{Q,h}ᵀ (W_K Bᵀ [w_μ, w_σ])_h per head, so that a query x gives
        the paper's w_μᵀ s = x · (W_{Q,h}ᵀ K_hᵀ w_μ) (s = K_h q_h, K = B W_K) without materialising
        K, the (batch, H, q, N) scores or even q_h = W_Q x. dtype: that of the queries (default
        B's); the score weights are kept in at least float32.
        """
        b = state.coeffs.shape[0]
        h, d = self.config.n_heads, self.head_dim
        coeffs = state.coeffs  # B: (batch, N, e), float32 or wider
        dtype = dtype or coeffs.dtype
        values = self.value(coeffs.to(dtype)).view(b, -1, h, d).transpose(1, 2)  # (batch, H, N, d)
        with autocast_off(coeffs.device.type):
            work = torch.promote_types(dtype, torch.float32)  # μ, σ² in >= float32
            w = torch.cat([self.mu_proj.weight, self.sigma_proj.weight]).to(coeffs.dtype)  # (2, N)
            wb = torch.matmul(w, coeffs)  # w_μᵀB, w_σᵀB: (batch, 2, e)
            wk = self.key(wb.to(self.key.weight.dtype)).to(work).view(b, 2, h, d)  # Kᵀw: (batch, 2, H, d)
            w_query = self.query.weight.to(work).view(h, d, -1)  # W_{Q,h}: (H, d, e)
            scores = torch.einsum("hde,bjhd->behj", w_query, wk).flatten(2)  # (batch, e, H·2)
        return MemoryProjections(values=values, score_weights=scores.contiguous())

    def densities(
        self, queries: Tensor, state: LTMState, projections: MemoryProjections | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """μ, σ² (batch, H, q) of each query's density, and V heads (batch, H, N, d).

        μ = sigmoid(w_μᵀ s), σ² = softplus(w_σᵀ s), s = K_h q_h / √d, computed as
        x · (W_{Q,h}ᵀ K_hᵀ w) / √d with the projections of the state (see ``projections``).
        """
        if projections is None:
            projections = self.projections(state, queries.dtype)
        b, q, _ = queries.shape
        h, d = self.config.n_heads, self.head_dim
        weights = projections.score_weights  # (batch, e, H·2)
        with autocast_off(queries.device.type):
            bias = torch.cat([self.mu_proj.bias, self.sigma_proj.bias]).to(weights.dtype)  # (2,)
            scores = torch.matmul(queries.to(weights.dtype), weights)  # (batch, q, H·2)
            logits = scores.view(b, q, h, 2).transpose(1, 2) / math.sqrt(d) + bias  # (batch, H, q, 2)
            mu = torch.sigmoid(logits[..., 0])
            sigma2 = F.softplus(logits[..., 1]).clamp_min(self.config.min_sigma2)
        return mu, sigma2, projections.values

    def read(
        self,
        queries: Tensor,
        state: LTMState,
        projections: MemoryProjections | None = None,
        *,
        query_mask: Tensor | None = None,
        return_kl: bool = True,
        sticky_stats: bool | None = None,
        accumulate_mass: bool = False,
        return_record: bool = False,
    ) -> tuple[Tensor, LTMState, Tensor | None] | tuple[Tensor, LTMState, Tensor | None, ReadRecord]:
        """Read the memory: (out (batch, q, e), state with the new bin mass, KL (batch, H, q) or None),
        and with return_record the ReadRecord of the densities it used.

        projections: ``self.projections(state, queries.dtype)``, computed here if None; pass it to
            reuse it for every read of the same state (token-by-token decoding).
        query_mask: (batch, q) bool, False for queries that must not count (padding): their KL is 0
            and they add no sticky bin mass. Their output is computed like any other.
        return_kl: compute KL(𝒩(μ, σ²) ‖ 𝒩(μ, σ₀²)) per row, head and query (else None).
        sticky_stats: compute the bin mass for sticky sampling (default: config.sticky).
        accumulate_mass: add the bin mass to the state's instead of replacing it (a block read
            in several calls accumulates the mass of all its queries).
        Rows whose memory is empty get out = 0, KL = 0 and no bin mass.
        """
        b, q, e = queries.shape
        mu, sigma2, values = self.densities(queries, state, projections)
        with autocast_off(queries.device.type):
            if torch.is_grad_enabled() or q > 1:
                context = self.normalizer.context(mu, sigma2, values)  # V_hᵀ E_p[ψ]: (batch, H, q, d)
            else:  # one query without autograd (decoding): E_p[ψ] (batch, H, 1, N) is small, use it
                context = self.normalizer(mu, sigma2).to(values.dtype) @ values
        out = self.out(context.transpose(1, 2).reshape(b, q, e))
        has_memory = state.length > 0  # (batch,)
        # eager: one host read skips the masking where every row has memory; compiled: always mask
        # (exact: a product with ones), so the graph has no break
        every_row = not torch.compiler.is_compiling() and bool(has_memory.all())
        all_rows = query_mask is None and every_row
        valid = has_memory[:, None] if query_mask is None else has_memory[:, None] & query_mask  # (batch, q)
        if not every_row:
            out = out * has_memory[:, None, None].to(out.dtype)
        kl = None
        if return_kl:
            kl = gaussian_kl(sigma2, self.config.kl_sigma0)
            if not all_rows:
                kl = kl * valid[:, None, :]
        if self.config.sticky if sticky_stats is None else sticky_stats:
            weight = None if all_rows else valid[:, None, :].to(mu.dtype)  # (batch, 1, q)
            mass = bin_mass(self.normalizer.cdf, mu.detach(), sigma2.detach(), self.config.num_bins, weight)
            mass = mass.to(state.bin_mass.dtype)
            state = replace(state, bin_mass=state.bin_mass + mass if accumulate_mass else mass)
        if return_record:
            return out, state, kl, ReadRecord(mu.detach(), sigma2.detach(), valid.expand(b, q))
        return out, state, kl

    def attend(self, queries: Tensor, state: LTMState) -> tuple[Tensor, LTMState, Tensor]:
        """Read the memory: (out (batch, q, e), state with new bin mass, KL (batch, H, q))."""
        return self.read(queries, state)

    def forward(
        self,
        queries: Tensor | None,
        new_vectors: Tensor | None = None,
        state: LTMState | None = None,
        *,
        return_kl: bool = False,
        generator: torch.Generator | None = None,
        return_record: bool = False,
    ):
        """Absorb new_vectors, then attend with queries.

        queries: (batch, q, e) of the current segment; new_vectors: (batch, L, e)
        entering the memory (None or L = 0: no update); state: None for an
        empty memory. Returns (out (batch, q, e), state), plus the mean KL
        regularizer over rows with memory, heads and queries if return_kl, plus
        the LTMRecord of the absorption and the read if return_record (last).
        Rows whose memory is empty get out = 0.

        queries None: only absorb new_vectors and return the new state (and the
        LTMRecord). This is ``update`` as a module call, which FSDP's hooks see (hf/fsdp.py).
        """
        record = LTMRecord() if return_record else None
        if queries is None:
            if new_vectors is None or return_kl:
                raise ValueError("queries=None (absorb only) needs new_vectors and return_kl=False")
            self._check_inputs(new_vectors, None, state, name="new_vectors")
            state = state if state is not None else self.init_state(new_vectors.shape[0], new_vectors.device)
            if new_vectors.shape[1] > 0:
                state = self._update(state, new_vectors, generator, record)
            return state if record is None else (state, record)
        self._check_inputs(queries, new_vectors, state)
        if state is None:
            state = self.init_state(queries.shape[0], queries.device, queries.dtype)
        if new_vectors is not None and new_vectors.shape[1] > 0:
            state = self._update(state, new_vectors, generator, record)
        out, state, kl, *read = self.read(queries, state, return_record=record is not None)
        outputs = (out, state)
        if return_kl:
            rows = (state.length > 0).sum().clamp_min(1)
            outputs += (kl.sum() / (rows * kl.shape[1] * kl.shape[2]),)
        if record is not None:
            record.read = read[0]
            outputs += (record,)
        return outputs

    def _update(
        self,
        state: LTMState,
        new_vectors: Tensor,
        generator: torch.Generator | None,
        record: LTMRecord | None,
    ) -> LTMState:
        """``update``, appending its UpdateRecord to ``record`` (if not None)."""
        if record is None:
            return self.update(state, new_vectors, generator)
        state, done = self.update(state, new_vectors, generator, return_record=True)
        record.updates.append(done)
        return state

    # ---------------------------------------------------------------- checks

    def _check_inputs(
        self, queries: Tensor, new_vectors: Tensor | None, state: LTMState | None, name: str = "queries"
    ) -> None:
        e = self.config.d_model
        if not isinstance(queries, Tensor) or queries.dim() != 3 or queries.shape[-1] != e:
            n = "q" if name == "queries" else "L"
            raise ValueError(f"{name} must be a (batch, {n}, {e}) tensor, got {describe(queries)}")
        batch = queries.shape[0]
        if new_vectors is not None:
            if not isinstance(new_vectors, Tensor) or new_vectors.dim() != 3 or new_vectors.shape[-1] != e:
                raise ValueError(f"new_vectors must be a (batch, L, {e}) tensor, got {describe(new_vectors)}")
            if new_vectors.shape[0] != batch:
                raise ValueError(f"new_vectors has batch size {new_vectors.shape[0]} but queries has {batch}")
        if state is not None:
            if not isinstance(state, LTMState):
                raise ValueError(f"state must be an LTMState or None, got {type(state).__name__}")
            c = self.config
            expected = {
                "coeffs": (batch, c.num_basis, e),
                "length": (batch,),
                "bin_mass": (batch, c.num_bins),
            }
            for name, shape in expected.items():
                got = tuple(getattr(state, name).shape)
                if got != shape:
                    raise ValueError(
                        f"state.{name} has shape {got}, expected {shape} "
                        f"(batch size of state and queries must match)"
                    )
        if self.config.check_finite and not torch.compiler.is_compiling():
            for name, t in (("queries", queries), ("new_vectors", new_vectors)):
                # A finite sum proves every element finite (NaN and Inf propagate); only a
                # non-finite sum (which may also be an overflow) needs the elementwise check.
                if t is not None and t.numel() and not bool(torch.isfinite(t.sum())):
                    if not bool(torch.isfinite(t).all()):
                        raise ValueError(f"{name} contains NaN or Inf values")
