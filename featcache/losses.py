"""The distillation losses, as plain functions of tensors: usable in any training loop (a plain loop, Lightning,
timm's train.py), and the one implementation that ``featcache distill --method ...`` itself calls.

Every function takes tensors and floats only (no featcache configuration objects) and computes in float32, since
cached rows arrive as float16. Papers (docs/methods.md lists them with their files):

* ``xent`` — softmax cross-entropy, label −1 ignored: Eq. 1 of Landro et al. (2021), *multi-teacher transfer
  learning* (MT), Eq. 4 of Landro et al., *Can a powerful neural network be a teacher for a weaker neural network?*
  (TS).
* ``mse`` / ``feature_regression`` — the per-element mean squared error 1/(m·d) ΣΣ (a − b)²: TS Eq. 6 (MT Eq. 2
  divided by the width d, a constant that the loss weight absorbs).
* ``kd`` — Hinton, Vinyals, Dean (2015), *Distilling the Knowledge in a Neural Network*: T²·KL(softmax(t/T) ‖
  softmax(s/T)), several teachers' softened distributions averaged.
* ``translator_loss`` — MT Eq. 3: one teacher whose feature a translator maps to the student's width.
* ``multi_teacher`` — MT Eq. 5 and Algorithm 1: T teachers, teacher i matched at the student's layer l_i.
* ``aka`` and its pieces ``aka_transfer`` (Eq. 2), ``aka_regulariser`` (Eq. 4), ``prediction_entropy`` (Eq. 5),
  ``select_teachers`` (Eq. 6), ``aka_soft`` (Eq. 7) — Shen et al. (CVPR 2019), *Customizing Student Networks From
  Heterogeneous Teachers via Adaptive Knowledge Amalgamation*, Eq. 8.

The composite losses return the total as one tensor (ready for ``.backward()``); pass ``terms={}`` to also receive
each weighted term's unweighted value, detached, for logging.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from featcache.errors import ConfigError

__all__ = ["aka", "aka_regulariser", "aka_soft", "aka_transfer", "feature_regression", "kd", "mse",
           "multi_teacher", "prediction_entropy", "select_teachers", "translator_loss", "xent"]


def xent(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy averaged over the batch's labelled samples (MT Eq. 1, TS Eq. 4).

    ``labels`` are int64 class indices; −1 marks a sample whose label may not be read: it adds nothing, and a batch
    without a labelled sample gives 0 (not the NaN of an empty mean).
    """
    labelled = (labels >= 0).sum()
    total = F.cross_entropy(logits.float(), labels, ignore_index=-1, reduction="sum")
    return total / labelled.clamp(min=1)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1/(m·d) ΣΣ (a − b)² over a batch of m rows of width d, in float32 (TS Eq. 6). ``a`` and ``b`` must have the
    same shape (broadcasting one row against a batch would give a plausible, wrong number)."""
    if a.shape != b.shape:
        raise ConfigError(f"mse: the two inputs differ in shape, {tuple(a.shape)} and {tuple(b.shape)}; map one to "
                          "the other's width first (a translator, a regressor)")
    return F.mse_loss(a.float(), b.float())


def feature_regression(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """L_mse(f(x), g(x)) of TS-Learning (TS Eq. 6): the student's feature layer g(x) [B, D] regresses the teacher's
    (cached) feature f(x) [B, D], per-element mean. The feature term of TS Eq. 5; widths must match (use
    ``translator_loss`` to keep the student's own width)."""
    if student_features.shape != teacher_features.shape:
        raise ConfigError(f"feature_regression: student features {tuple(student_features.shape)} and teacher "
                          f"features {tuple(teacher_features.shape)} differ in shape; widen the student's feature "
                          "layer to the teacher's or use translator_loss")
    return mse(student_features, teacher_features)


def kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor | Sequence[torch.Tensor],
       temperature: float = 4.0) -> torch.Tensor:
    """T²·KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch (Hinton et al. 2015, §2).

    ``student_logits`` s [B, C]; ``teacher_logits`` t [B, C] or a list of several teachers' [B, C] logits, whose
    softened distributions are averaged (Hinton's ensemble target). The T² factor keeps the soft-target gradients on
    the scale of the hard-target ones. Raw logits, so any temperature works.
    """
    if not temperature > 0:
        raise ConfigError(f"kd: temperature must be > 0 (the softmax divides by it), got {temperature}")
    teachers = [teacher_logits] if isinstance(teacher_logits, torch.Tensor) else list(teacher_logits)
    if not teachers:
        raise ConfigError("kd: teacher_logits is an empty list; pass at least one teacher's logits")
    for t in teachers:  # KL would broadcast a [B, 1] or [1, C] target without a word
        if t.shape != student_logits.shape:
            raise ConfigError(f"kd: teacher logits {tuple(t.shape)} and student logits {tuple(student_logits.shape)} "
                              "differ in shape; the teacher's classes must be the student's")
    T = temperature
    target = torch.stack([F.softmax(t.float() / T, dim=1) for t in teachers]).mean(0)
    return F.kl_div(F.log_softmax(student_logits.float() / T, dim=1), target, reduction="batchmean") * (T * T)


def translator_loss(student_features: torch.Tensor, student_logits: torch.Tensor, translated: torch.Tensor,
                    translated_logits: torch.Tensor, labels: torch.Tensor, lambda_mse: float = 1.0,
                    lambda_xent: float = 1.0, terms: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """L = λ_mse·L_MSE(t(f_t), f_l1) + λ_xent·[L_xent(y, l0(t(f_t))) + L_xent(y, l0(f_l1))] — MT Eq. 3 (λs 1 there).

    ``student_features`` f_l1 [B, d] and ``student_logits`` l0(f_l1) [B, C]: the student's feature layer and its
    classifier's output; ``translated`` t(f_t) [B, d]: the teacher's feature mapped to the student's width by a
    translator (a learnt linear layer, or parameter-free resampling: ``featcache.models.translators``);
    ``translated_logits`` l0(t(f_t)) [B, C]: the translated feature through the student's classifier, the term that
    makes the translator produce features the classifier can use (MT §3.2). ``terms`` receives ``mse``,
    ``xent_translated`` and ``xent``.
    """
    l_mse = mse(translated, student_features)
    l_xent_t = xent(translated_logits, labels)
    l_xent = xent(student_logits, labels)
    if terms is not None:
        terms.update(mse=l_mse.detach(), xent_translated=l_xent_t.detach(), xent=l_xent.detach())
    return lambda_mse * l_mse + lambda_xent * (l_xent_t + l_xent)


def multi_teacher(student_logits: torch.Tensor, student_levels: Sequence[torch.Tensor],
                  translated: Sequence[torch.Tensor], translated_logits: Sequence[torch.Tensor], labels: torch.Tensor,
                  lambda_mse: float = 1.0, lambda_xent: float = 1.0,
                  terms: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """L = λ_xent·L_xent(y, l0(f_l1)) + Σ_{i=1..T} [λ_mse·L_MSE(t_i(f_ti), f_li) + λ_xent·L_xent(y,
    l0∘l1∘…∘l_{i−1}(t_i(f_ti)))] — MT Eq. 5, summed in the order of Algorithm 1 (λs 1 there).

    For teachers i = 1…T (lists in that order): ``student_levels[i-1]`` f_li, the output of the student's layer l_i
    (l_1 the feature layer before the classifier l0, l_T the farthest from it); ``translated[i-1]`` t_i(f_ti),
    teacher i's feature through its own translator to the width of l_i; ``translated_logits[i-1]`` that translated
    feature classified through the rest of the student, l0∘l1∘…∘l_{i−1} (Algorithm 1, line 7).
    ``student_logits`` l0(f_l1) [B, C]. With T = 1 this is Eq. 3 (``translator_loss``). ``terms`` receives ``xent``
    and ``mse_i``, ``xent_i`` per teacher.
    """
    if not len(student_levels) == len(translated) == len(translated_logits) >= 1:
        raise ConfigError(f"multi_teacher: student_levels, translated and translated_logits need one entry per "
                          f"teacher, got {len(student_levels)}, {len(translated)} and {len(translated_logits)}")
    l_xent = xent(student_logits, labels)
    parts = {"xent": l_xent.detach()}
    loss = lambda_xent * l_xent
    for i, (f_li, t_i, z_i) in enumerate(zip(student_levels, translated, translated_logits, strict=True), start=1):
        l_mse = mse(t_i, f_li)
        l_xent = xent(z_i, labels)
        loss = loss + lambda_mse * l_mse + lambda_xent * l_xent
        parts[f"mse_{i}"] = l_mse.detach()
        parts[f"xent_{i}"] = l_xent.detach()
    if terms is not None:
        terms.update(parts)
    return loss


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """I(p) = −Σ_i p_i log p_i of softmax(logits) [B, C], per sample [B] — AKA Eq. 5."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def select_teachers(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per sample, the index of the teacher with the least prediction entropy (AKA Eq. 6): int64 [B]."""
    return torch.stack([prediction_entropy(lg) for lg in logits], dim=1).argmin(dim=1)


def aka_regulariser(weight: torch.Tensor) -> torch.Tensor:
    """L_reg = 1/C_out Σ_j (Σ_i w_ij² − 1)² for a feature-alignment weight [C_out, C_in] (a linear layer's weight,
    or a 1×1 convolution's flattened to 2-D; row j = output j) — AKA Eq. 4, the soft form of the unit-norm constraint
    Eq. 3 that keeps both aligned features from collapsing to zero."""
    return ((weight.float().pow(2).sum(dim=1) - 1) ** 2).mean()


def aka_transfer(student_aligned: torch.Tensor, teacher_aligned: torch.Tensor) -> torch.Tensor:
    """L_a = 1/(C·H·W) ‖F_a^s − F_a^t‖² per sample [B] — AKA Eq. 2, on the feature-aligned (Eq. 1) student and
    teacher features: [B, C] vectors or [B, C, H, W] maps of one shape."""
    if student_aligned.shape != teacher_aligned.shape:
        raise ConfigError(f"aka_transfer: aligned features differ in shape, {tuple(student_aligned.shape)} and "
                          f"{tuple(teacher_aligned.shape)}; align both to the same channels")
    diff = student_aligned.float() - teacher_aligned.float()
    return diff.pow(2).mean(dim=tuple(range(1, diff.dim())))


def aka_soft(student_scores: torch.Tensor, teacher_logits: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """L_soft = 1/C_cls ‖F_score^s − λ_t·F_score^t‖² per sample [B] — AKA Eq. 7: the student's logits over the
    teacher's classes [B, C] against the teacher's [B, C], with ``scale`` λ_t a learnable scalar per teacher that
    compensates the teachers' different logit scales."""
    return (student_scores.float() - scale * teacher_logits.float()).pow(2).mean(dim=1)


def aka(transfer: Sequence[torch.Tensor], regulariser: Sequence[torch.Tensor], soft: Sequence[torch.Tensor],
        teacher_logits: Sequence[torch.Tensor], tasks: Sequence[Sequence[int]] | None = None,
        terms: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """L = Σ_tasks mean_batch [L_a + L_reg + L_soft] of each sample's selected teacher t_se — AKA Eq. 8, no labels.

    Per teacher t (lists in one order): ``transfer[t]`` [B], its transfer loss summed over the aligned blocks
    (``aka_transfer``, Eq. 2); ``regulariser[t]`` a scalar, the Eq. 4 terms of its and the student's alignment
    weights (``aka_regulariser``); ``soft[t]`` [B], its soft-target loss (``aka_soft``, Eq. 7); ``teacher_logits[t]``
    [B, C_t], the logits whose entropy selects it (Eqs. 5–6). ``tasks`` groups the teachers that cover the same
    classes (default: one task of all teachers); within a task each sample learns from its least-entropy teacher
    only. ``terms`` receives ``transfer``, ``reg`` and ``soft`` summed over tasks.
    """
    n = len(transfer)
    if not n or not len(regulariser) == len(soft) == len(teacher_logits) == n:
        raise ConfigError(f"aka: transfer, regulariser, soft and teacher_logits need one entry per teacher, got "
                          f"{n}, {len(regulariser)}, {len(soft)} and {len(teacher_logits)}")
    groups = [list(range(n))] if tasks is None else [list(task) for task in tasks]
    b = transfer[0].shape[0]
    total = transfer[0].new_zeros((), dtype=torch.float32)
    parts: dict[str, torch.Tensor | float] = {"transfer": 0.0, "reg": 0.0, "soft": 0.0}
    for members in groups:
        per_teacher = [(transfer[t], regulariser[t].expand(b), soft[t]) for t in members]
        if len(members) > 1:
            chosen = select_teachers([teacher_logits[t] for t in members])
        else:
            chosen = torch.zeros(b, dtype=torch.int64, device=transfer[0].device)
        for name, k in (("transfer", 0), ("reg", 1), ("soft", 2)):
            stacked = torch.stack([p[k] for p in per_teacher], dim=1)  # [B, members]
            term = stacked.gather(1, chosen[:, None]).mean()
            total = total + term
            parts[name] = parts[name] + term.detach()
    if terms is not None:
        terms.update({k: torch.as_tensor(v) for k, v in parts.items()})
    return total
