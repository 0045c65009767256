"""A skin-lesion classifier trained the way others do, without dermadv: to audit a model dermadv did not train.

Plain PyTorch on HAM10000's layout: its own lesion-grouped split, a torchvision ResNet-18 from random weights (or
``--init``), inputs flipped to BGR and normalised with ImageNet mean/std *outside* the network, outputs in the
ISIC 2018 class order. It saves a state dict, TorchScript, ONNX and the model card that tells dermadv so.

    python benchmarks/third_party_classifier.py --data ../shared/data/HAM10000 --out runs/third-party
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision
import yaml
from PIL import Image
from sklearn.model_selection import GroupShuffleSplit

CLASSES = ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc")  # the ISIC 2018 challenge's order
MEAN_BGR, STD_BGR = (0.406, 0.456, 0.485), (0.225, 0.224, 0.229)  # ImageNet's, in the network's channel order


def load_images(data: Path, image_ids: list[str], size: int) -> torch.Tensor:
    paths = {p.stem: p for p in data.rglob("*.jpg")}
    return torch.from_numpy(
        np.stack(
            [np.asarray(Image.open(paths[i]).convert("RGB").resize((size, size), Image.BILINEAR)) for i in image_ids]
        )
    )


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 N×H×W×3 RGB -> the network's input: BGR, ImageNet-normalised, N×3×H×W."""
    x = images.permute(0, 3, 1, 2).float().div(255).flip(1)
    return (x - torch.tensor(MEAN_BGR).view(1, 3, 1, 1)) / torch.tensor(STD_BGR).view(1, 3, 1, 1)


def main(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    meta = pd.read_csv(args.data / "HAM10000_metadata.csv")  # pandas reads the CRLF line ends as they are
    if args.split_file:  # e.g. `dermadv data split`'s, so that an audit of its test split sees unseen lesions only
        given = pd.read_csv(args.split_file, dtype=str).set_index("image_id")["split"].reindex(meta["image_id"])
        train_idx, test_idx = np.flatnonzero(given.eq("train").values), np.flatnonzero(given.eq("test").values)
    else:
        train_idx, test_idx = next(
            GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=args.seed).split(meta, groups=meta["lesion_id"])
        )
    train_idx = train_idx[: args.limit] if args.limit else train_idx
    args.out.mkdir(parents=True, exist_ok=True)
    split = pd.DataFrame({"image_id": meta["image_id"], "split": "unused"})
    split.loc[train_idx, "split"], split.loc[test_idx, "split"] = "train", "test"
    split[split["split"] != "unused"].to_csv(args.out / "split.csv", index=False)
    labels = torch.tensor([CLASSES.index(dx) for dx in meta["dx"]])
    x_train = load_images(args.data, meta["image_id"].iloc[train_idx].tolist(), args.image_size)  # uint8, as stored
    x_test = load_images(args.data, meta["image_id"].iloc[test_idx].tolist(), args.image_size)
    y_train, y_test = labels[train_idx], labels[test_idx]
    model = torchvision.models.resnet18(weights=None, num_classes=len(CLASSES))
    if args.init:
        model.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    for epoch in range(args.epochs):
        model.train()
        for batch in torch.randperm(len(x_train)).split(args.batch_size):
            if len(batch) < 2:  # batch norm needs two images
                continue
            loss = torch.nn.functional.cross_entropy(model(preprocess(x_train[batch])), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}/{args.epochs}: last batch loss {loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        accuracy = (torch.cat([model(preprocess(b)).argmax(1) for b in x_test.split(256)]) == y_test).float().mean()
    example = torch.zeros(1, 3, args.image_size, args.image_size)
    torch.save(model.state_dict(), args.out / "model_state.pt")
    torch.jit.trace(model, example).save(str(args.out / "model.ts"))
    # batch norm kept as its own node: folded into the convolutions, the graph's gradients differ from the
    # module's in the last bits, enough to flip the sign of a near-zero component in a PGD step
    torch.onnx.export(
        model, (example,), str(args.out / "model.onnx"), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
        do_constant_folding=False,
    )  # fmt: skip
    card = {
        "input_size": [args.image_size, args.image_size],
        "value_range": 1,
        "mean": list(MEAN_BGR),
        "std": list(STD_BGR),
        "channel_order": "BGR",
        "layout": "NCHW",
        "output": "logits",
        "classes": list(CLASSES),
    }
    for name in ("model.card.yaml", "model.ts.card.yaml", "model.onnx.card.yaml"):
        (args.out / name).write_text(yaml.safe_dump(card, sort_keys=False))
    print(f"test accuracy {accuracy:.4f} on {len(y_test)} images")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Folder with HAM10000_metadata.csv and the images.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--limit", type=int, default=None, help="Train on the first N training images only.")
    parser.add_argument("--init", type=Path, default=None, help="A state dict to start from (random otherwise).")
    parser.add_argument("--split-file", type=Path, default=None, help="CSV of image_id,split (train/test) to use.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    main(parser.parse_args())
