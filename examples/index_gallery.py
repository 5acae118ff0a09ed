"""Index a folder of person crops and query it: reidfast's Embedder (any runtime) with a
GalleryIndex.

    python examples/index_gallery.py MODEL GALLERY_DIR QUERY_IMAGE [QUERY_IMAGE ...] [--top 5]

MODEL is a training checkpoint (.pt, run eagerly) or an ONNX file exported by `reidfast export`
(.onnx, run by ONNX Runtime). Every image under GALLERY_DIR (jpg, jpeg, png) is embedded and
indexed; each query prints its `--top` closest gallery images with their distances.
"""

import argparse
import pathlib
import sys

from reidfast.deploy import Embedder
from reidfast.retrieval import GalleryIndex

SUFFIXES = {".jpg", ".jpeg", ".png"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=pathlib.Path, help="a checkpoint (.pt) or an exported ONNX file (.onnx)")
    parser.add_argument("gallery", type=pathlib.Path, help="a folder of gallery images")
    parser.add_argument("queries", type=pathlib.Path, nargs="+", help="query images")
    parser.add_argument("--top", type=int, default=5, help="results per query")
    args = parser.parse_args(argv)
    embedder = Embedder.from_onnx(args.model) if args.model.suffix == ".onnx" else Embedder.from_checkpoint(args.model)
    paths = sorted(path for path in args.gallery.rglob("*") if path.suffix.lower() in SUFFIXES)
    if not paths:
        parser.error(f"no {'/'.join(sorted(SUFFIXES))} image under {args.gallery}")
    index = GalleryIndex(metric="euclidean")
    index.add(embedder(paths))
    distances, ids = index.search(embedder(args.queries), k=min(args.top, len(paths)))
    for query, row_distances, row_ids in zip(args.queries, distances.tolist(), ids.tolist()):
        print(query)
        for distance, gallery_id in zip(row_distances, row_ids):
            print(f"  {distance:8.4f}  {paths[gallery_id]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
