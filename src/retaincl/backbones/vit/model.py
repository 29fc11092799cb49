"""``PETLViT``: one timm VisionTransformer with composable parameter-efficient modules.

The timm model is kept whole (``self.net``, its state-dict keys unchanged); modules are
attached, in any combination, by methods that register them in ``self.petl`` and hook
them onto timm's submodules:

==========  =========================================  =================================
module      attach                                     where it acts
==========  =========================================  =================================
adapter     ``add_adapter(bottleneck, scale, ...)``    beside a block's MLP or attention
lora        ``add_lora(rank, alpha, targets, ...)``    added to ``attn.qkv`` / ``attn.proj``
ssf         ``add_ssf(targets)``                       after each matched operation
vpt         ``add_vpt(length, deep, ...)``             extra tokens after [CLS]
prefix      ``add_prefix(length, layers)``             key/value prefixes in attention
==========  =========================================  =================================

A forward can switch every module off (``modules=False``: the pre-trained model, as
L2P-style methods query it) and can take prompts and prefixes as arguments, with or
without a batch dimension, so that each sample carries its own (L2P, DualPrompt,
CODA-Prompt, DAP). Arguments override the attached prompt/prefix of the same layer.

Token layout of :meth:`PETLViT.forward_tokens`: ``[CLS, (register tokens), prompts,
patches]``; the [CLS] feature is timm's ``forward_head(pre_logits=True)`` of the
sequence with the prompt tokens removed (VPT reads [CLS]; prompts never enter pooling).

Hooks are bound methods of this module wrapped in ``functools.partial``, so
``copy.deepcopy`` (the runner's private backbone copies) rebinds them to the copy.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from retaincl.backbones.vit.attention import check_prefix_block, prefix_block
from retaincl.backbones.vit.modules import (
    Adapter,
    LoRA,
    PrefixPrompts,
    PromptTokens,
    ScaleShift,
    vpt_init_range,
)

#: SSF after every operation of a ViT, as the SSF paper (Sec. 3.2) and APER's SSF variant.
SSF_ALL = (
    "patch_embed",
    "blocks.*.norm1",
    "blocks.*.attn.qkv",
    "blocks.*.attn.proj",
    "blocks.*.norm2",
    "blocks.*.mlp.fc1",
    "blocks.*.mlp.fc2",
    "norm",
)

#: prompts: a tensor (layer 0 only) or ``{layer: tokens}``; tokens ``[B,] P x D``.
Prompts = torch.Tensor | Mapping[int, torch.Tensor]
#: prefixes: ``{layer: (key, value)}``; key and value ``[B,] P x D``.
Prefixes = Mapping[int, tuple[torch.Tensor, torch.Tensor]]
#: prompt generator: ``(layer, tokens without prompts B x N x D) -> B x P x D`` or None.
PromptGenerator = Callable[[int, torch.Tensor], torch.Tensor | None]


@dataclass
class Tokens:
    """Output tokens after the final norm (unless asked without): ``[CLS, (registers), prompts, patches]``."""

    all: torch.Tensor
    num_prefix: int  # [CLS] + register tokens
    num_prompts: int

    @property
    def cls(self) -> torch.Tensor:
        return self.all[:, 0]

    @property
    def prompts(self) -> torch.Tensor:
        """Outputs at the prompt positions (L2P's classifier reads their mean)."""
        return self.all[:, self.num_prefix : self.num_prefix + self.num_prompts]

    def without_prompts(self) -> torch.Tensor:
        return torch.cat([self.all[:, : self.num_prefix], self.all[:, self.num_prefix + self.num_prompts :]], dim=1)


class PETLViT(nn.Module):
    """A timm ``VisionTransformer`` plus attached PETL modules (see the module docstring)."""

    def __init__(self, net: VisionTransformer) -> None:
        super().__init__()
        if not isinstance(net, VisionTransformer):
            raise TypeError(f"PETLViT wraps timm's VisionTransformer, got {type(net).__name__}")
        self.net = net
        self.petl = nn.ModuleDict()
        self.specs: dict[str, dict[str, Any]] = {}
        self._modules_on = True
        self._stash: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ shape facts

    @property
    def dim(self) -> int:
        return int(self.net.embed_dim)

    @property
    def depth(self) -> int:
        return len(self.net.blocks)

    def _layers(self, layers: Iterable[int] | None) -> tuple[int, ...]:
        chosen = tuple(range(self.depth)) if layers is None else tuple(int(i) for i in layers)
        bad = [i for i in chosen if not 0 <= i < self.depth]
        if bad or len(set(chosen)) != len(chosen) or not chosen:
            raise ValueError(f"layers {list(chosen)} must be distinct indices in 0..{self.depth - 1}")
        return tuple(sorted(chosen))

    def _claim(self, kind: str, spec: dict[str, Any]) -> None:
        if kind in self.petl:
            raise ValueError(f"a {kind!r} module is already attached; attach each kind once")
        self.specs[kind] = spec

    # ------------------------------------------------------------------ attaching

    def add_adapter(
        self,
        bottleneck: int = 64,
        scale: float | None = 0.1,
        layers: Iterable[int] | None = None,
        input: str = "residual",
        dropout: float = 0.0,
        position: str = "mlp",
        activation: str = "relu",
    ) -> nn.ModuleDict:
        """AdaptFormer adapters parallel to the MLP of each chosen block (all by default).

        Block output: ``h + MLP(LN(h)) + s * up(ReLU(down(a)))`` with ``h`` the block's
        stream after attention. ``input="residual"`` feeds ``a = h``, as the official
        AdaptFormer code (``ffn_adapter_layernorm_option='none'``) and APER/RanPAC do;
        ``input="normed"`` feeds ``a = LN(h)``, the MLP's input, as eq. 2 of the paper.

        ``position="attn"`` puts the adapter parallel to the attention sublayer instead:
        ``x + Attn(LN1(x)) + s * up(act(down(a)))`` with ``a = LN1(x)`` (``normed``) or ``x``
        (``residual``), as LAE's adapter (gqk/LAE, ``Block.adapt_module("attn", ...)``).
        ``scale=None`` (a learnable scalar) and ``activation="gelu"`` are LAE's too.
        """
        if input not in ("residual", "normed"):
            raise ValueError(f"adapter input must be 'residual' or 'normed', got {input!r}")
        if position not in ("mlp", "attn"):
            raise ValueError(f"adapter position must be 'mlp' or 'attn', got {position!r}")
        chosen = self._layers(layers)
        spec = {"bottleneck": bottleneck, "scale": scale, "layers": list(chosen), "input": input, "dropout": dropout}
        if position != "mlp" or activation != "relu":
            spec |= {"position": position, "activation": activation}
        self._claim("adapter", spec)
        mods = nn.ModuleDict({str(i): Adapter(self.dim, bottleneck, scale, dropout, activation) for i in chosen})
        self.petl["adapter"] = mods
        for i in chosen:
            blk = self.net.blocks[i]
            if position == "attn":
                # stash the attention input from norm1, add the adapter to attn.proj's output
                # (before proj_drop / ls1 / drop_path): also reached when a prefix runs the block
                blk.norm1.register_forward_hook(functools.partial(self._adapter_stash_attn, layer=i))
                blk.attn.proj.register_forward_hook(functools.partial(self._adapter_hook_attn, layer=i))
            else:
                blk.norm2.register_forward_pre_hook(functools.partial(self._adapter_stash, layer=i))
                blk.mlp.register_forward_hook(functools.partial(self._adapter_hook, layer=i))
        return mods

    def add_lora(
        self,
        rank: int = 4,
        alpha: float | None = None,
        targets: Sequence[str] = ("qkv",),
        layers: Iterable[int] | None = None,
    ) -> nn.ModuleDict:
        """LoRA on the attention projections ``targets`` (``qkv``, ``proj``) of the chosen blocks."""
        bad = [t for t in targets if t not in ("qkv", "proj")]
        if bad or not targets:
            raise ValueError(f"LoRA targets must be among 'qkv', 'proj'; got {list(targets)}")
        chosen = self._layers(layers)
        self._claim("lora", {"rank": rank, "alpha": alpha, "targets": list(targets), "layers": list(chosen)})
        mods = nn.ModuleDict()
        for i in chosen:
            for t in targets:
                lin = getattr(self.net.blocks[i].attn, t)
                mods[f"{i}_{t}"] = LoRA(lin.in_features, lin.out_features, rank, alpha)
                lin.register_forward_hook(functools.partial(self._lora_hook, key=f"{i}_{t}"))
        self.petl["lora"] = mods
        return mods

    def add_ssf(self, targets: Sequence[str] = SSF_ALL) -> nn.ModuleDict:
        """SSF scale-and-shift after every submodule of ``net`` whose name matches a pattern.

        Patterns are ``fnmatch`` patterns over ``net.named_modules()`` names (``SSF_ALL``:
        after patch embedding, both norms, qkv, proj, fc1, fc2 of every block, final norm).
        """
        names = [n for n, _ in self.net.named_modules() if n and any(fnmatch.fnmatchcase(n, p) for p in targets)]
        if not names:
            raise ValueError(f"SSF targets {list(targets)} match no submodule of the ViT")
        self._claim("ssf", {"targets": list(targets)})
        mods = nn.ModuleDict()
        modules = dict(self.net.named_modules())
        for name in names:
            key = name.replace(".", "_")
            mods[key] = ScaleShift(self._out_channels(name, modules[name]))
            modules[name].register_forward_hook(functools.partial(self._ssf_hook, key=key))
        self.petl["ssf"] = mods
        return mods

    def add_vpt(self, length: int = 10, deep: bool = False, layers: Iterable[int] | None = None) -> PromptTokens:
        """VPT prompts: shallow (layer 0 only) or deep (every layer, or ``layers``)."""
        chosen = self._layers(layers if layers is not None else (None if deep else (0,)))
        self._claim("vpt", {"length": length, "layers": list(chosen)})
        mod = PromptTokens(self.dim, length, chosen, vpt_init_range(self.net.patch_embed.patch_size, self.dim))
        self.petl["vpt"] = mod
        return mod

    def add_prefix(self, length: int = 5, layers: Iterable[int] = (0, 1, 2, 3, 4)) -> PrefixPrompts:
        """Learnable key/value prefixes of ``length`` in each of ``layers``."""
        chosen = self._layers(layers)
        for i in chosen:
            check_prefix_block(self.net.blocks[i], i)
        self._claim("prefix", {"length": length, "layers": list(chosen)})
        mod = PrefixPrompts(self.dim, length, chosen)
        self.petl["prefix"] = mod
        return mod

    def _out_channels(self, name: str, module: nn.Module) -> int:
        if isinstance(module, nn.Linear):
            return module.out_features
        if isinstance(module, nn.LayerNorm):
            return int(module.normalized_shape[-1])
        if name == "patch_embed":
            return self.dim
        raise ValueError(f"SSF cannot tell the channel count of {name!r} ({type(module).__name__})")

    # ------------------------------------------------------------------ hooks

    def _adapter_stash(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], layer: int) -> None:
        if self._modules_on and self.specs["adapter"]["input"] == "residual":
            self._stash[layer] = inputs[0]

    def _adapter_hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor, layer: int) -> torch.Tensor:
        if not self._modules_on:
            return output
        a = self._stash.pop(layer, None) if self.specs["adapter"]["input"] == "residual" else inputs[0]
        if a is None:
            raise RuntimeError(f"adapter of layer {layer}: norm2 did not run before the MLP")
        return output + self.petl["adapter"][str(layer)](a)

    def _adapter_stash_attn(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor, layer: int
    ) -> None:
        if self._modules_on:
            self._stash[-1 - layer] = output if self.specs["adapter"]["input"] == "normed" else inputs[0]

    def _adapter_hook_attn(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor, layer: int) -> torch.Tensor:
        if not self._modules_on:
            return output
        a = self._stash.pop(-1 - layer, None)
        if a is None:
            raise RuntimeError(f"adapter of layer {layer}: norm1 did not run before the attention projection")
        return output + self.petl["adapter"][str(layer)](a)

    def _lora_hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor, key: str) -> torch.Tensor:
        if not self._modules_on:
            return output
        return output + self.petl["lora"][key](inputs[0])

    def _ssf_hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor, key: str) -> torch.Tensor:
        if not self._modules_on:
            return output
        return self.petl["ssf"][key](output)

    # ------------------------------------------------------------------ forward

    def forward_tokens(
        self,
        x: torch.Tensor,
        modules: bool = True,
        prompts: Prompts | None = None,
        prefixes: Prefixes | None = None,
        prompt_fn: PromptGenerator | None = None,
        final_norm: bool = True,
    ) -> Tokens:
        """All output tokens for preprocessed images ``x`` (``B x 3 x H x W``).

        ``final_norm=False`` returns the last block's output before the final LayerNorm
        (what ESN's task-attention blocks read: the official ``returnbeforepool``).

        ``modules=False`` runs the pre-trained ViT: no attached module acts, and the
        ``prompts``/``prefixes`` arguments must be None. Prompts (``{layer: [B,] P x D}``
        or one tensor for layer 0): the lowest layer inserts its tokens after [CLS],
        each later listed layer replaces the prompt tokens with its own (same ``P``).
        Prefixes (``{layer: (key, value)}``, each ``[B,] P x D``) are prepended to that
        layer's attention keys and values. Arguments override attached modules layer by
        layer; a leading batch dimension gives every sample its own prompts.

        ``prompt_fn(layer, tokens)`` generates prompts from each layer's own input (DAP):
        it gets the tokens entering the layer without any prompt tokens, and what it
        returns replaces the previous layer's prompts (None: no prompts at that layer).
        """
        if not modules and (prompts is not None or prefixes is not None or prompt_fn is not None):
            raise ValueError("modules=False runs the pre-trained ViT; pass no prompts or prefixes with it")
        if prompt_fn is not None and prompts is not None:
            raise ValueError("pass prompts or prompt_fn, not both")
        prompt_map = self._prompt_map(prompts) if modules else {}
        prefix_map = self._prefix_map(prefixes) if modules else {}
        net, was_on = self.net, self._modules_on
        self._modules_on = modules
        try:
            h = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))
            num_prompts = 0
            for i, blk in enumerate(net.blocks):
                if prompt_fn is not None:
                    h, num_prompts = self._generate_prompts(h, prompt_fn, num_prompts, i)
                elif i in prompt_map:
                    h, num_prompts = self._put_prompts(h, prompt_map[i], num_prompts, i)
                h = prefix_block(blk, h, *prefix_map[i]) if i in prefix_map else blk(h)
            h = net.norm(h) if final_norm else h
        finally:
            self._modules_on = was_on
            self._stash.clear()
        return Tokens(h, int(net.num_prefix_tokens), num_prompts)

    def forward_features(
        self,
        x: torch.Tensor,
        modules: bool = True,
        prompts: Prompts | None = None,
        prefixes: Prefixes | None = None,
        prompt_fn: PromptGenerator | None = None,
    ) -> torch.Tensor:
        """The [CLS] feature (``B x D``, timm's pre-logits) of preprocessed images."""
        tokens = self.forward_tokens(x, modules=modules, prompts=prompts, prefixes=prefixes, prompt_fn=prompt_fn)
        return self.net.forward_head(tokens.without_prompts(), pre_logits=True)

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.forward_features(x, **kwargs)

    def _prompt_map(self, prompts: Prompts | None) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = dict(self.petl["vpt"].as_dict()) if "vpt" in self.petl else {}
        if isinstance(prompts, torch.Tensor):
            prompts = {0: prompts}
        for layer, tokens in (prompts or {}).items():
            self._check_tokens(tokens, f"prompts[{layer}]", layer)
            out[int(layer)] = tokens
        return out

    def _prefix_map(self, prefixes: Prefixes | None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        out = dict(self.petl["prefix"].as_dict()) if "prefix" in self.petl else {}
        for layer, pair in (prefixes or {}).items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"prefixes[{layer}] must be a (key, value) pair of [B,] P x D tensors")
            key, value = pair
            self._check_tokens(key, f"prefixes[{layer}] key", layer)
            self._check_tokens(value, f"prefixes[{layer}] value", layer)
            if key.shape != value.shape:
                raise ValueError(f"prefixes[{layer}]: key {tuple(key.shape)} and value {tuple(value.shape)} differ")
            check_prefix_block(self.net.blocks[int(layer)], int(layer))
            out[int(layer)] = (key, value)
        return out

    def _check_tokens(self, t: torch.Tensor, what: str, layer: int) -> None:
        if not 0 <= int(layer) < self.depth:
            raise ValueError(f"{what}: layer {layer} is outside 0..{self.depth - 1}")
        if t.dim() not in (2, 3) or t.shape[-1] != self.dim:
            raise ValueError(f"{what} must be [B,] P x {self.dim}, got {tuple(t.shape)}")

    def _generate_prompts(
        self, h: torch.Tensor, prompt_fn: PromptGenerator, current: int, layer: int
    ) -> tuple[torch.Tensor, int]:
        """Drop the previous layer's prompts; insert what ``prompt_fn`` makes of the rest."""
        k = int(self.net.num_prefix_tokens)
        plain = torch.cat([h[:, :k], h[:, k + current :]], dim=1)
        tokens = prompt_fn(layer, plain)
        return (plain, 0) if tokens is None else self._put_prompts(plain, tokens, 0, layer)

    def _put_prompts(self, h: torch.Tensor, tokens: torch.Tensor, current: int, layer: int) -> tuple[torch.Tensor, int]:
        B, k = h.shape[0], int(self.net.num_prefix_tokens)
        if tokens.dim() == 2:
            tokens = tokens.unsqueeze(0).expand(B, -1, -1)
        if tokens.shape[0] != B:
            raise ValueError(f"prompts of layer {layer} have batch size {tokens.shape[0]}, the images {B}")
        P = tokens.shape[1]
        if current and P != current:
            raise ValueError(f"prompts of layer {layer} have length {P}; the earlier layers' have {current}")
        rest = h[:, k + current :]
        return torch.cat([h[:, :k], tokens.to(h.dtype), rest], dim=1), P

    # ------------------------------------------------------------------ parameters and state

    def trainable_parameters(self, backbone: bool = False) -> list[nn.Parameter]:
        """The attached modules' parameters (and the ViT's with ``backbone=True``)."""
        params = list(self.petl.parameters())
        return params + list(self.net.parameters()) if backbone else params

    def freeze_backbone(self, frozen: bool = True) -> None:
        """``requires_grad`` off (on) for the pre-trained weights; modules stay trainable."""
        self.net.requires_grad_(not frozen)
        self.petl.requires_grad_(True)

    def modules_state_dict(self) -> dict[str, torch.Tensor]:
        """The attached modules' state only (small): what a learner checkpoints."""
        return {k: v.detach().cpu().clone() for k, v in self.petl.state_dict().items()}

    def load_modules_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore :meth:`modules_state_dict` into the same attached modules."""
        self.petl.load_state_dict(dict(state))
