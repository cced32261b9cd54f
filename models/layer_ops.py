"""One schema for the backward-pass layer operations (paper Appendix B.1.3) and the alignment options.

`LayerOps` is what a training config's `[layer_ops]` table holds; `AlignmentOptions` is what the alignment
loss reads: the same twelve switches plus the backward-pass input noise and the share of the batch R is
evaluated on. Both are frozen pydantic models; unknown keys and wrong types are errors naming the field.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from .errors import UnknownNameError

__all__ = ["LayerOps", "AlignmentOptions"]


class LayerOps(BaseModel):
    """Backward-pass layer operations of Appendix B.1.3 (the rows of Table 5).

    `fo_*` act on the forward path output f_l (W only), `bo_*` on the backward path output b_l (B only),
    `bi_*` on the input to the backward pass. bwmc = mean-centre across the batch, fwmc = mean-centre
    across features, fwl2n = centre then L2-normalise across features. Defaults: forward-path bias on,
    everything else off, so the alignment loss is exactly Table 1 on the real activations.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    fo_bias: StrictBool = True
    fo_relu: StrictBool = False
    fo_bwmc: StrictBool = False
    fo_fwmc: StrictBool = False
    fo_fwl2n: StrictBool = False
    bo_bias: StrictBool = False
    bo_relu: StrictBool = False
    bo_fwmc: StrictBool = False
    bo_fwl2n: StrictBool = False
    bi_bwmc: StrictBool = False
    bi_fwmc: StrictBool = False
    bi_fwl2n: StrictBool = False


class AlignmentOptions(LayerOps):
    """The layer ops plus backward-pass input noise (Appendix B.1.1) and the batch share R is evaluated on.

    input_noise: std sigma of the Gaussian backward-pass input (0: none); noise_mode "replace" feeds pure
    noise, "perturb" adds it to the stashed input. batch_fraction f in (0, 1]: R reads the first
    ceil(f * N) samples of the stashed batch (1: the whole batch, the paper's setting).
    """

    input_noise: float = Field(0.0, ge=0, allow_inf_nan=False)
    noise_mode: Literal["replace", "perturb"] = "replace"
    batch_fraction: float = Field(1.0, gt=0, le=1)

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ValueError(describe_errors(error, "AlignmentOptions")) from None

    @classmethod
    def from_dict(cls, values: Optional[dict], source: str = "alignment options") -> "AlignmentOptions":
        """Build from a dict (e.g. a preset's `layer_ops` table), naming unknown keys and the source."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise UnknownNameError(f"{source}: unknown alignment option(s) {unknown}; "
                                     f"valid options: {', '.join(cls.model_fields)}")
        return cls(**values)

    @property
    def changes_input(self) -> bool:
        return self.input_noise > 0 or self.bi_bwmc or self.bi_fwmc or self.bi_fwl2n

    @property
    def changes_backward_path(self) -> bool:
        return self.bo_bias or self.bo_relu or self.bo_fwmc or self.bo_fwl2n


def describe_errors(error: ValidationError, owner: str) -> str:
    """'Owner.field: what is wrong (got value)' for each problem of a pydantic ValidationError."""
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(all fields)"
        detail = "unknown option" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append(f"{owner}.{field}: {detail} (got {item.get('input')!r})")
    return "; ".join(problems)
