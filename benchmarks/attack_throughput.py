"""Adversarial images per second of our attacks against torchattacks' and ART's PGD, measured in one run.

    python benchmarks/attack_throughput.py --arch resnet18 --image-size 64 --batch 64 --n 256
    python benchmarks/attack_throughput.py --checkpoint runs/clf64/model.safetensors \
        --generator runs/advgan/generator.safetensors

Every method attacks the same images, in the same batches, with the same classifier, target, eps and
(for PGD) 10 steps of 2.5·eps/10 from a random start. Classifier forward-only images/s is the limit no
attack can pass. A random-init classifier is used unless ``--checkpoint`` is given; with one, early
stopping shows its real effect (a random network is fooled in a step or two). No timed asserts.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from dermadv.attacks.gradient import PGD
from dermadv.config import format_eps, parse_eps

STEPS = 10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_rate(run_batch: Callable[[torch.Tensor], object], images: torch.Tensor, batch: int) -> float:
    """Images per second of ``run_batch`` over ``images`` in batches, after one warm-up batch."""
    run_batch(images[:batch])
    _sync(images.device)
    start = time.perf_counter()
    for chunk in images.split(batch):
        run_batch(chunk)
    _sync(images.device)
    return len(images) / (time.perf_counter() - start)


def _forward_rate(model: nn.Module, images: torch.Tensor, batch: int) -> float:
    @torch.no_grad()
    def run(x: torch.Tensor) -> object:
        return model(x)

    return measure_rate(run, images, batch)


def _ours_rate(model: nn.Module, images: torch.Tensor, batch: int, eps: float, target: int, early_stop: bool) -> float:
    attack = PGD(eps, steps=STEPS, step_size=2.5 * eps / STEPS, random_start=True, early_stop=early_stop, seed=0)
    # the full user-facing call, including its final forward pass that scores success
    return measure_rate(lambda x: attack(model, x, target=target), images, batch)


def _torchattacks_rate(model: nn.Module, images: torch.Tensor, batch: int, eps: float, target: int) -> float | None:
    try:
        import torchattacks
    except ImportError:
        print("torchattacks is not installed; skipping it")
        return None
    attack = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / STEPS, steps=STEPS, random_start=True)
    attack.set_mode_targeted_by_label(quiet=True)
    return measure_rate(lambda x: attack(x, torch.full((len(x),), target, device=x.device)), images, batch)


def _art_rate(
    model: nn.Module, images: torch.Tensor, batch: int, eps: float, target: int, classes: int
) -> float | None:
    try:
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        print("adversarial-robustness-toolbox is not installed; skipping it")
        return None
    classifier = PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(images.shape[1:]),
        nb_classes=classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if images.is_cuda else "cpu",
    )
    attack = ProjectedGradientDescent(
        classifier,
        norm=np.inf,
        eps=eps,
        eps_step=2.5 * eps / STEPS,
        max_iter=STEPS,
        targeted=True,
        num_random_init=1,
        batch_size=batch,
        verbose=False,
    )
    one_hot = np.eye(classes, dtype=np.float32)[np.full(batch, target)]
    return measure_rate(
        lambda x: attack.generate(x=x.cpu().numpy(), y=one_hot[: len(x)]),
        images,
        batch,
    )


# --- generator attack (the lead's dermadv.attacks.generator) ---------------------------------------
def _generator_rate(
    model: nn.Module,
    images: torch.Tensor,
    batch: int,
    eps: float,
    target: int,
    path: str | None,
    condition: str,
    channels: int = 16,
    steps: int = 1,
) -> float | None:
    """Images/s of the generator attack making adversarial images (as torchattacks' call does: no scoring pass),
    or ``None`` (with a message) when it is not available."""
    try:
        from dermadv.attacks.generator import GeneratorAttack  # noqa: F401
    except ImportError:
        print("dermadv.attacks.generator is not available; skipping the generator attack")
        return None
    try:
        if path is not None:
            from dermadv.attacks.generator import load_generator

            attack = load_generator(path, device=images.device)
        else:
            # an untrained generator runs exactly as fast as a trained one
            from dermadv.attacks.generator import GeneratorSpec, PerturbationGenerator

            spec = GeneratorSpec(condition=condition, channels=channels, eps=eps, target_index=target, steps=steps)
            net = PerturbationGenerator(eps, channels=channels, condition=condition).to(images.device).eval()
            attack = GeneratorAttack(net, spec=spec)
    except (ImportError, TypeError) as exc:
        print(f"cannot build the generator attack ({exc}); skipping it")
        return None
    with torch.no_grad():  # the conditioning gradient is taken under enable_grad inside
        return measure_rate(lambda x: attack.perturb(model, x, labels=None, target=target), images, batch)


def _build_model(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, int, int]:
    """The classifier, its class count and its input size."""
    if args.checkpoint:
        from dermadv.models.checkpoints import load_checkpoint

        model, meta = load_checkpoint(args.checkpoint, device=device)
        return model.to(device).eval(), len(meta.classes), args.image_size or meta.image_size[0]
    from dermadv.models.classifier import build_classifier

    model = build_classifier(args.arch, args.num_classes)
    return model.to(device).eval(), args.num_classes, args.image_size or 64


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--checkpoint", help="a dermadv classifier checkpoint (default: random init)")
    parser.add_argument(
        "--generator",
        help="a generator.safetensors to time (default: untrained ones, gradient-conditioned and image-only)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's, or 64")
    parser.add_argument("--num-classes", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n", type=int, default=256, help="images per method")
    parser.add_argument("--eps", default="2/255")
    parser.add_argument("--target", type=int, default=5, help="target class index (5 = nv)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    eps = parse_eps(args.eps)
    model, classes, size = _build_model(args, device)
    target = args.target % classes
    generator = torch.Generator().manual_seed(args.seed)
    images = (torch.rand(args.n, 3, size, size, generator=generator) * 255).round().div(255).to(device)

    print(
        f"{args.arch if not args.checkpoint else args.checkpoint} at {size}x{size}, batch {args.batch}, "
        f"n {args.n}, eps {format_eps(eps)}, PGD-{STEPS} targeted, device {device}, "
        f"{torch.get_num_threads()} threads"
    )
    rates: dict[str, float | None] = {
        "classifier forward only (limit)": _forward_rate(model, images, args.batch),
        "ours PGD-10": _ours_rate(model, images, args.batch, eps, target, early_stop=False),
        "ours PGD-10 early stop": _ours_rate(model, images, args.batch, eps, target, early_stop=True),
        "torchattacks PGD-10": _torchattacks_rate(model, images, args.batch, eps, target),
        "ART ProjectedGradientDescent-10": _art_rate(model, images, args.batch, eps, target, classes),
        "generator": _generator_rate(model, images, args.batch, eps, target, args.generator, "gradient"),
    }
    # untrained generators run exactly as fast as trained ones: the cheaper variants beside it
    for condition, channels, steps in (
        ("gradient", 16, 2),
        ("gradient-half", 16, 1),
        ("gradient-half", 8, 1),
        ("image", 16, 1),
    ):
        name = f"generator, {condition}, {channels} channels" + (f", {steps} steps" if steps > 1 else "")
        rates[name] = _generator_rate(model, images, args.batch, eps, target, None, condition, channels, steps)
    width = max(len(k) for k in rates)
    for name, rate in rates.items():
        print(f"{name:<{width}}  {'skipped' if rate is None else f'{rate:10.1f} images/s'}")

    def ratio(a: str, b: str) -> str:
        ra, rb = rates[a], rates[b]
        return "n/a" if ra is None or rb is None else f"{ra / rb:.2f}x"

    print(
        f"ours / torchattacks: {ratio('ours PGD-10', 'torchattacks PGD-10')} (no early stop), "
        f"{ratio('ours PGD-10 early stop', 'torchattacks PGD-10')} (early stop)"
    )
    print(
        f"ours / ART:          {ratio('ours PGD-10', 'ART ProjectedGradientDescent-10')} (no early stop), "
        f"{ratio('ours PGD-10 early stop', 'ART ProjectedGradientDescent-10')} (early stop)"
    )
    for name in [k for k in rates if k.startswith("generator")]:
        if rates.get(name) is not None:
            print(
                f"{name} / torchattacks PGD-10: {ratio(name, 'torchattacks PGD-10')}, "
                f"{name} / ART PGD-10: {ratio(name, 'ART ProjectedGradientDescent-10')}"
            )


if __name__ == "__main__":
    main()
