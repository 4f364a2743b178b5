"""Method variants of a config, picked by the config string after the file name.

    python -m attnrl_jax.train --config=configs/r1_distill_qwen_1p5b.py:grpo

`apply_variant(c, name)` edits the config in place; --config.key=value overrides still apply on
top. The variants (ALGORITHM.md section 9 and the paper's Tables 2 and 3):

| variant | method | branching | ADS | sampling | steps |
|---|---|---|---|---|---|
| attnrl (default) | attnrl | atb | all three parts | one-step off-policy | 500 |
| grpo | grpo | none | none | on-policy | 800 |
| treerl | treerl | entropy | none | on-policy | 800 |
| treerl_off_policy | treerl | entropy | none | one-step off-policy | 800 |
| treerl_atb | treerl | atb | none | on-policy | 800 |
| first_two_steps | treerl | earliest (steps 2 and 3) | none | on-policy | 800 |
| no_attention_filter | attnrl | atb | without the attention filter | off-policy | 500 |
| no_difficulty_expansion | attnrl | atb | without difficulty-aware expansion | off-policy | 500 |

The paper runs GRPO and TreeRL for 800 steps and AttnRL for 500 (its Table 3 lists "TreeRL +
one-step off-policy" separately, so plain TreeRL and GRPO sample on-policy). first_two_steps
is the ICLR version's ablation "branch at the first two steps" (55.4 there): the `earliest`
selector, which branches at response steps 2 and 3 (step 1 would be an empty prefix, i.e. a
fresh sample), with TreeRL's settings otherwise, like treerl_atb.
"""

from ml_collections import ConfigDict

_VARIANTS = {
    "attnrl": {"method": "attnrl", "off_policy": True, "total_steps": 500},
    "grpo": {"method": "grpo", "off_policy": False, "total_steps": 800},
    "treerl": {"method": "treerl", "off_policy": False, "total_steps": 800},
    "treerl_off_policy": {"method": "treerl", "off_policy": True, "total_steps": 800},
    "treerl_atb": {"method": "treerl", "branching": "atb", "off_policy": False, "total_steps": 800},
    "first_two_steps": {
        "method": "treerl",
        "branching": "earliest",
        "off_policy": False,
        "total_steps": 800,
    },
    "no_attention_filter": {"method": "attnrl", "ads.attention_filter": False},
    "no_difficulty_expansion": {"method": "attnrl", "ads.difficulty_expansion": False},
}
VARIANTS = tuple(_VARIANTS)


def apply_variant(c: ConfigDict, name: str) -> ConfigDict:
    """Sets the keys of variant `name` ("" is attnrl); a ValueError names the known ones."""
    name = name or "attnrl"
    if name not in _VARIANTS:
        raise ValueError(f"unknown config variant {name!r}; known: {', '.join(VARIANTS)}")
    for key, value in _VARIANTS[name].items():
        node = c
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return c
