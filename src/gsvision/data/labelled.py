"""Labelled image / splat datasets for zero-shot evaluation, in clip_benchmark's layouts.

A :class:`ZeroShotData` holds class names, prompt templates and an iterable of
:class:`LabelledSample` (key, encoded image or ``None``, ``.gsv`` payload or ``None``, class index),
read and not decoded; :func:`gsvision.train.zeroshot.evaluate` scores it. Layouts:

- ``wds``: ``DIR/classnames.txt``, ``DIR/zeroshot_classification_templates.txt`` (``{c}`` marks the
  class name) and tar shards in ``DIR/<split>/`` (``nshards.txt`` + ``0.tar`` ... as
  clip_benchmark's ``wds_*`` datasets, or any ``*.tar``) or in ``DIR`` itself. A sample holds
  ``cls`` (the class index) and an image (``jpg``/``png``/``webp``), a ``gsv`` payload, or both.
- ``folder``: an ImageFolder tree, one sub-folder per class (sorted names = class indices), holding
  images and/or ``.gsv`` files (an image and a payload with the same stem are one sample). Class
  names come from ``DIR/classnames.txt`` or the sub-folder names (``_`` → space).
- ``imagenet1k``: either layout with open_clip's 1,000 class names and 80 OpenAI templates; class
  sub-folders are ImageNet synsets (``n01440764``, ...) or class indices, so a partial folder still
  maps to the right classes.

A sample the source cannot read (no or bad ``cls``, no image or payload, a truncated shard) is
yielded with its ``error`` set, so the evaluation reports it and goes on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from gsvision.data.shards import IMAGE_EXTENSIONS, ShardReadError, iter_samples

__all__ = [
    "CLASSNAMES_FILE",
    "DATASETS",
    "TEMPLATES_FILE",
    "LabelledSample",
    "ZeroShotData",
    "folder_dataset",
    "format_template",
    "imagenet1k_dataset",
    "load_templates",
    "open_dataset",
    "wds_dataset",
]

log = logging.getLogger(__name__)

#: ``gsvision eval --dataset`` values.
DATASETS = ("imagenet1k", "wds", "folder")

CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
DEFAULT_TEMPLATES = ("a photo of a {c}.",)

Template = str | Callable[[str], str]


class LabelledSample(NamedTuple):
    """One sample of a labelled dataset, as read (nothing decoded yet)."""

    key: str
    image: bytes | None  # the encoded image (jpg/png/webp ...), if any
    payload: bytes | None  # the .gsv payload, if any
    label: int  # class index (-1 when ``error`` is set)
    error: str | None = None  # why the source could not read it (the sample is skipped)


@dataclass
class ZeroShotData:
    """A labelled dataset: class names, prompt templates and the samples.

    Iterating yields :class:`LabelledSample` (a fresh pass each time).
    """

    name: str
    classnames: list[str]
    templates: list[Template]  # strings use ``{c}`` (or ``{}``) for the class name; or callables
    source: str  # where the samples come from (for the report)
    reader: Callable[[], Iterator[LabelledSample]] = field(repr=False)
    size: int | None = None  # number of samples, when known (the progress bar's total)

    def __iter__(self) -> Iterator[LabelledSample]:
        return self.reader()


def format_template(template: Template, classname: str) -> str:
    """A prompt: ``template`` with the class name (``{c}`` or ``{}`` in a string; or a call)."""
    if isinstance(template, str):
        return template.format(classname, c=classname)
    return template(classname)


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_templates(spec: str | Path) -> list[Template]:
    """``"openai"`` (open_clip's 80 ImageNet templates), ``"simple"`` (its 7), or a text file with
    one template per line, ``{c}`` marking the class name (clip_benchmark's format)."""
    import open_clip

    if spec == "openai":
        return list(open_clip.OPENAI_IMAGENET_TEMPLATES)
    if spec == "simple":
        return list(open_clip.SIMPLE_IMAGENET_TEMPLATES)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"templates: expected 'openai', 'simple' or a text file, got {spec!r}")
    templates = _read_lines(path)
    if not templates:
        raise ValueError(f"{path}: no templates")
    return templates


def _dir_templates(root: Path) -> list[Template]:
    path = root / TEMPLATES_FILE
    if path.is_file():
        return load_templates(path)
    log.warning("%s: no %s; using %r", root, TEMPLATES_FILE, DEFAULT_TEMPLATES[0])
    return list(DEFAULT_TEMPLATES)


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _find_shards(root: Path, split: str) -> list[Path]:
    """clip_benchmark's ``root/<split>/{0..n-1}.tar`` (``nshards.txt``), else ``root/<split>/*.tar``,
    else ``root/*.tar``; ``[]`` when there are none."""
    for where in (root / split, root):
        nshards = where / "nshards.txt"
        if nshards.is_file():
            try:
                count = int(nshards.read_text().strip())
            except ValueError:
                raise ValueError(f"{nshards}: not an integer") from None
            return [where / f"{i}.tar" for i in range(count)]
        found = sorted(where.glob("*.tar"), key=lambda p: _natural(p.name))
        if found:
            return found
    return []


def _label(raw: bytes | None, num_classes: int) -> tuple[int, str | None]:
    if raw is None:
        return -1, "no .cls label"
    try:
        label = int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return -1, f"bad .cls label {raw[:20]!r}"
    if not 0 <= label < num_classes:
        return -1, f"label {label} outside the {num_classes} classes"
    return label, None


def _shard_samples(shards: Sequence[Path], num_classes: int) -> Iterator[LabelledSample]:
    for url in shards:
        try:
            for s in iter_samples(str(url)):
                label, error = _label(s.files.get("cls"), num_classes)
                found = s.image()
                payload = s.files.get("gsv")
                if error is None and found is None and payload is None:
                    error = f"no image or .gsv member (members: {', '.join(sorted(s.files))})"
                image = found[1] if found is not None else None
                yield LabelledSample(s.key, image, payload, label, error)
        except ShardReadError as exc:
            yield LabelledSample(exc.key or str(url), None, None, -1, str(exc))


def wds_dataset(
    root: str | Path,
    classnames: Sequence[str] | None = None,
    templates: Sequence[Template] | None = None,
    split: str = "test",
    name: str = "wds",
) -> ZeroShotData:
    """clip_benchmark's local webdataset layout (see the module docstring).

    Args:
        root: the dataset folder.
        classnames, templates: override ``classnames.txt`` / ``zeroshot_classification_templates.txt``.
        split: the shard sub-folder tried first (clip_benchmark's ``test``).

    Raises:
        ValueError: no shards, or no class names.
    """
    root = Path(root)
    shards = _find_shards(root, split)
    if not shards:
        raise ValueError(f"{root}: no .tar shards (looked in {root / split} and {root})")
    if classnames is None:
        if not (root / CLASSNAMES_FILE).is_file():
            raise ValueError(f"{root}: no {CLASSNAMES_FILE} (one class name per line)")
        classnames = _read_lines(root / CLASSNAMES_FILE)
    classnames = list(classnames)
    num = len(classnames)
    where = shards[0].parent
    return ZeroShotData(
        name=name,
        classnames=classnames,
        templates=list(templates) if templates is not None else _dir_templates(root),
        source=f"{len(shards)} shard(s) in {where}",
        reader=lambda: _shard_samples(shards, num),
    )


_SPLAT_SUFFIX = ".gsv"


def _folder_items(class_dirs: Sequence[tuple[Path, int]], root: Path) -> list[tuple]:
    """``(key, image path or None, payload path or None, label)`` per sample, in sorted order."""
    exts = {f".{e}" for e in IMAGE_EXTENSIONS}
    items = []
    for folder, label in class_dirs:
        groups: dict[str, dict[str, Path]] = {}
        for path in sorted(folder.rglob("*")):
            suffix = path.suffix.lower()
            if not path.is_file() or path.name.startswith("."):
                continue
            if suffix in exts or suffix == _SPLAT_SUFFIX:
                key = path.relative_to(root).with_suffix("").as_posix()
                kind = "payload" if suffix == _SPLAT_SUFFIX else "image"
                groups.setdefault(key, {}).setdefault(kind, path)
        for key in sorted(groups, key=_natural):
            g = groups[key]
            items.append((key, g.get("image"), g.get("payload"), label))
    return items


def _folder_samples(items: list[tuple]) -> Iterator[LabelledSample]:
    for key, image, payload, label in items:
        try:
            yield LabelledSample(
                key,
                image.read_bytes() if image is not None else None,
                payload.read_bytes() if payload is not None else None,
                label,
            )
        except OSError as exc:
            yield LabelledSample(key, None, None, -1, f"cannot read: {exc}")


def _class_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise ValueError(f"{root}: no class sub-folders")
    return dirs


def folder_dataset(
    root: str | Path,
    classnames: Sequence[str] | None = None,
    templates: Sequence[Template] | None = None,
    class_index: Callable[[list[str]], list[int]] | None = None,
    name: str = "folder",
) -> ZeroShotData:
    """An ImageFolder tree (see the module docstring).

    Args:
        root: the folder holding one sub-folder per class.
        classnames: all class names (default: ``classnames.txt``, else the sub-folder names with
            underscores as spaces).
        templates: default: ``zeroshot_classification_templates.txt``, else ``a photo of a {c}.``
        class_index: sub-folder names → class indices (default: their sorted positions).
    """
    root = Path(root)
    dirs = _class_dirs(root)
    names = [d.name for d in dirs]
    labels = class_index(names) if class_index is not None else list(range(len(dirs)))
    if classnames is None:
        if (root / CLASSNAMES_FILE).is_file():
            classnames = _read_lines(root / CLASSNAMES_FILE)
        else:
            classnames = [n.replace("_", " ") for n in names]
    classnames = list(classnames)
    if max(labels) >= len(classnames):
        raise ValueError(f"{root}: {len(dirs)} class sub-folders but {len(classnames)} class names")
    items = _folder_items(list(zip(dirs, labels, strict=True)), root)
    return ZeroShotData(
        name=name,
        classnames=classnames,
        templates=list(templates) if templates is not None else _dir_templates(root),
        source=f"{len(items)} sample(s) in {len(dirs)} class folder(s) of {root}",
        reader=lambda: _folder_samples(items),
        size=len(items),
    )


def _imagenet_synsets() -> list[str]:
    """The 1,000 ImageNet-1K synset ids in class-index order (timm ships the list)."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


def _imagenet_index(names: list[str]) -> list[int]:
    """Sub-folder names → ImageNet class indices: synset ids (``n01440764``) or indices (``0``)."""
    if all(n.isdigit() for n in names):
        idx = [int(n) for n in names]
    elif all(re.fullmatch(r"n\d{8}", n) for n in names):
        synsets = {s: i for i, s in enumerate(_imagenet_synsets())}
        unknown = [n for n in names if n not in synsets]
        if unknown:
            raise ValueError(f"not ImageNet-1K synsets: {', '.join(unknown[:5])}")
        idx = [synsets[n] for n in names]
    elif len(names) == 1000:
        idx = list(range(1000))  # the standard sorted layout, whatever the names
    else:
        raise ValueError(
            "imagenet1k: class sub-folders must be ImageNet synset ids (n01440764, ...), class "
            f"indices, or all 1,000 classes; got {', '.join(names[:3])} ..."
        )
    if any(not 0 <= i < 1000 for i in idx):
        raise ValueError("imagenet1k: class index outside 0..999")
    return idx


def imagenet1k_dataset(
    root: str | Path, templates: Sequence[Template] | None = None, split: str = "test"
) -> ZeroShotData:
    """ImageNet-1K validation: class sub-folders (synset ids) or webdataset shards with ``cls``,
    scored against open_clip's 1,000 class names and 80 OpenAI templates (or ``templates``)."""
    import open_clip

    root = Path(root)
    names = list(open_clip.IMAGENET_CLASSNAMES)
    templates = list(templates) if templates is not None else load_templates("openai")
    if root.is_dir() and _find_shards(root, split):
        return wds_dataset(root, names, templates, split, name="imagenet1k")
    return folder_dataset(root, names, templates, _imagenet_index, name="imagenet1k")


def open_dataset(
    name: str, data_dir: str | Path, templates: str | None = None, split: str = "test"
) -> ZeroShotData:
    """A dataset by ``--dataset`` name (:data:`DATASETS`); ``templates`` overrides the dataset's
    own (``openai``, ``simple`` or a file, see :func:`load_templates`)."""
    given = load_templates(templates) if templates is not None else None
    if name == "imagenet1k":
        return imagenet1k_dataset(data_dir, given, split)
    if name == "wds":
        return wds_dataset(data_dir, None, given, split)
    if name == "folder":
        return folder_dataset(data_dir, None, given)
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
