"""``o2f convert-data``: one split of a dataset in any readable format to COCO or YOLO."""

from __future__ import annotations

import argparse

from o2f.data.formats import FORMATS


def cmd_convert_data(args: argparse.Namespace) -> int:
    from o2f.data.formats import convert_dataset

    counts = convert_dataset(args.src, args.to, args.out, args.img_dir, args.format, args.split,
                             args.copy_images)
    line = (f"read {args.src} ({counts['format']}): {counts['images']} images, "
            f"{counts['annotations']} annotations, {counts['categories']} categories; wrote "
            f"{args.out}")
    if args.to == "yolo":
        line += (f" (split '{args.split}': {counts['labels']} label lines"
                 + (f", {counts['skipped_crowd']} crowd / difficult boxes left out"
                    if counts["skipped_crowd"] else "") + ")")
    print(line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-data", help="convert annotations (COCO, YOLO, Pascal VOC, CrowdHuman) to COCO "
        "or YOLO",
        description="Read one split of a dataset as o2f reads it for training and testing "
        "(every bad record named) and write it as a COCO .json file (--to coco) or as the "
        "split of a YOLO dataset (--to yolo: OUT/images/SPLIT/ links to the images, "
        "OUT/labels/SPLIT/*.txt, OUT/data.yaml; run once per split into the same OUT).")
    p.add_argument("src", metavar="SRC", help="a COCO .json, a YOLO data.yaml, a folder of "
                   "Pascal VOC .xml files (or an ImageSets/Main/*.txt list), a CrowdHuman .odgt")
    p.add_argument("--to", required=True, choices=("coco", "yolo"), help="the output format")
    p.add_argument("--out", required=True, help="the .json file (coco) or the dataset folder "
                   "(yolo)")
    p.add_argument("--img-dir", default=None, help="the images (COCO and CrowdHuman: needed; "
                   "VOC: default JPEGImages/ or images/ beside the annotations; YOLO: from the "
                   "data.yaml)")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="the input format (default: auto, from the path)")
    p.add_argument("--split", default="train",
                   help="the split: of a YOLO data.yaml to read, and the name of the split "
                   "written with --to yolo (default: train)")
    p.add_argument("--copy-images", action="store_true",
                   help="--to yolo: copy the images instead of linking them")
    p.set_defaults(func=cmd_convert_data)
