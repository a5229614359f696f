"""Linear-probe on Slurm through submitit: ``python submitit_linprobe.py --job_dir ... --nodes 4 [--ngpus 8]
[--use_volta32] [--partition P] [--timeout MIN] [--comment C]`` and any flag of ``main_linprobe.py``
(``util/submitit_launch.py``; README.md, "On a cluster")."""
from util.submitit_launch import launch

if __name__ == "__main__":
    launch("main_linprobe", "Linear-probe on Slurm (submitit): main_linprobe.py's flags and the job's")
