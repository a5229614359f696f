"""Side by side: ``python -m detection.demo_report NAME=METRICS.json ...`` (from ``test.py --out-json``)."""
import sys

from segmentation.demo_report import side_by_side

COLUMNS = {"box AP": "coco/bbox_mAP", "AP50": "coco/bbox_mAP_50", "AP75": "coco/bbox_mAP_75",
           "APs": "coco/bbox_mAP_s", "APm": "coco/bbox_mAP_m", "APl": "coco/bbox_mAP_l"}

if __name__ == "__main__":
    side_by_side(sys.argv[1:], "detection.demo_report", COLUMNS, scale=100)  # COCO's AP in %, as papers print it
