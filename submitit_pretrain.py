"""Pretrain on Slurm through submitit: ``python submitit_pretrain.py --job_dir ... --nodes 4 [--ngpus 8]
[--use_volta32] [--partition P] [--timeout MIN] [--comment C]`` and any flag of ``main_pretrain.py``
(``util/submitit_launch.py``; README.md, "On a cluster")."""
from util.submitit_launch import launch

if __name__ == "__main__":
    launch("main_pretrain", "Pretrain on Slurm (submitit): main_pretrain.py's flags and the job's")
