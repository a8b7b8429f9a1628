#!/usr/bin/env python3
"""Factor a Zarr store on a SLURM cluster with dask-jobqueue.

This process runs the Dask scheduler and the client (``mmf_stream.factorize``);
``SLURMCluster`` submits the workers as batch jobs (``sbatch``), each job running
``processes`` single-threaded workers that read their row blocks straight from the
store. So the store (INPUT, or --means), this Python environment and the log
directory must be on a file system that the compute nodes share, and the compute
nodes must reach this host (``--interface`` / ``--scheduler-host``).

    python deploy/slurm/launch.py /shared/C.zarr --order 4 --out /shared/result.zarr \\
        --jobs 4 --cores 16 --memory 64GB --walltime 02:00:00 --queue normal --account proj
    python deploy/slurm/launch.py --cores 16 --memory 64GB --print-job-script   # submit nothing

``make_cluster(parse_args([...]))`` builds the cluster without submitting a job
(tests/test_deploy.py reads its ``job_script()``).
"""

from __future__ import annotations

import argparse
import re
import sys
import time


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _walltime(text: str) -> str:
    if _seconds(text) is None:
        raise argparse.ArgumentTypeError(f"walltime must be [D-]HH:MM:SS, MM:SS or MM, got {text!r}")
    return text


def _seconds(walltime: str) -> int | None:
    """SLURM's [D-]HH:MM:SS (also HH:MM:SS, MM:SS, MM, D-HH) in seconds; None if not one of these."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", walltime.strip())
    if not match:
        return None
    days, first, second, third = match.groups()
    days = int(days or 0)
    if days and second is None:  # D-HH
        parts = [int(first), 0, 0]
    elif third is not None:  # HH:MM:SS
        parts = [int(first), int(second), int(third)]
    elif second is not None:  # MM:SS, or D-HH:MM
        parts = [int(first), int(second), 0] if days else [0, int(first), int(second)]
    else:  # MM
        parts = [0, int(first), 0]
    hours, minutes, seconds = parts
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="Run mmf_stream's Dask engine on SLURM: workers are batch jobs submitted by dask-jobqueue, "
        "the scheduler and the client run here.",
    )
    parser.add_argument("input", nargs="?", default=None,
                        help="the matrix, a Zarr array path or URL every worker can read (or give --means)")
    parser.add_argument("--means", default=None, metavar="M",
                        help="class means (classes x features), a Zarr array path or URL: factored mode")
    parser.add_argument("--out", "-o", default=None, help="result directory (Zarr group), written by this process")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result")
    parser.add_argument("--order", "-k", type=_positive, default=5, help="indices per rotation (default 5)")
    parser.add_argument("--core-size", type=_positive, default=None, help="core size (default order - 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed for tie-breaks (default 0)")
    parser.add_argument("--labels", default=None, help="labels file: .npy, .txt or .csv, one per row")
    parser.add_argument("--schedule", choices=["staged", "auto"], default="staged",
                        help="'staged' (default: the levels run on the workers) or 'auto' (small inputs run "
                        "greedy, in this process)")

    slurm = parser.add_argument_group("SLURM worker jobs")
    slurm.add_argument("--jobs", type=_positive, default=2, help="worker jobs to submit (default 2)")
    slurm.add_argument("--cores", type=_positive, default=8, help="CPUs per job (--cpus-per-task; default 8)")
    slurm.add_argument("--processes", type=_positive, default=None,
                       help="worker processes per job (default: --cores, one single-threaded worker per CPU; "
                       "the kernels hold the GIL)")
    slurm.add_argument("--memory", default="32GB", help="memory per job, shared by its workers (default 32GB)")
    slurm.add_argument("--walltime", type=_walltime, default="01:00:00", help="time limit per job (default 01:00:00)")
    slurm.add_argument("--queue", "--partition", dest="queue", default=None, help="partition (-p)")
    slurm.add_argument("--account", default=None, help="account (-A)")
    slurm.add_argument("--job-name", default="mmf-stream-worker", help="job name (-J; default mmf-stream-worker)")
    slurm.add_argument("--job-extra", action="append", default=[], metavar="DIRECTIVE",
                       help="an extra #SBATCH directive, e.g. --job-extra=--constraint=avx512 (repeatable)")
    slurm.add_argument("--prologue", action="append", default=[], metavar="COMMAND",
                       help="a shell command run before the workers start, e.g. 'module load python' (repeatable)")
    slurm.add_argument("--log-directory", default="dask-logs", help="the jobs' output files (default dask-logs)")
    slurm.add_argument("--local-directory", default=None,
                       help="workers' scratch directory on the node (default: the node's temporary directory)")
    slurm.add_argument("--lifetime-margin", type=int, default=300, metavar="SECONDS",
                       help="workers retire gracefully this long before the walltime (default 300; 0: never)")

    net = parser.add_argument_group("scheduler (this process)")
    net.add_argument("--interface", default=None,
                     help="network interface the scheduler and workers use (e.g. ib0, eth0)")
    net.add_argument("--scheduler-host", default=None,
                     help="address the scheduler binds to (default: dask-jobqueue's, all interfaces)")
    net.add_argument("--scheduler-port", type=int, default=0, help="scheduler port (default 0: a free one)")
    net.add_argument("--dashboard-address", default=":8787", help="scheduler dashboard (default :8787)")

    run = parser.add_argument_group("run")
    run.add_argument("--wait-workers", type=int, default=None, metavar="N",
                     help="workers to wait for before starting (default: all, jobs x processes)")
    run.add_argument("--wait-timeout", type=float, default=3600.0, metavar="SECONDS",
                     help="how long to wait for them, queueing included (default 3600)")
    run.add_argument("--print-job-script", action="store_true",
                     help="print the worker job script and exit (submits nothing)")
    args = parser.parse_args(argv)

    if args.processes is None:
        args.processes = args.cores
    if args.processes > args.cores:
        parser.error(f"--processes ({args.processes}) is more than --cores ({args.cores})")
    if args.cores % args.processes:
        parser.error(f"--cores ({args.cores}) must be a multiple of --processes ({args.processes})")
    if not args.print_job_script:
        if (args.input is None) == (args.means is None):
            parser.error("give exactly one of INPUT or --means")
        if args.out is None:
            parser.error("--out is required (unless --print-job-script)")
    return args


def make_cluster(args: argparse.Namespace):
    """The SLURMCluster for ``args`` (from :func:`parse_args`); starts its scheduler, submits nothing."""
    from dask_jobqueue import SLURMCluster

    processes = args.processes or args.cores
    threads = args.cores // processes
    worker_extra_args = []
    margin = getattr(args, "lifetime_margin", 0)
    if margin > 0:
        lifetime = _seconds(args.walltime) - margin
        if lifetime > 60:
            # retire before SLURM kills the job: the worker hands its data on first
            worker_extra_args += ["--lifetime", f"{lifetime}s", "--lifetime-stagger", "60s"]
    scheduler_options = {"port": args.scheduler_port, "dashboard_address": args.dashboard_address}
    if args.scheduler_host:
        scheduler_options["host"] = args.scheduler_host
    prologue = [
        f"export OMP_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} MKL_NUM_THREADS={threads}",
        *args.prologue,
    ]
    return SLURMCluster(
        cores=args.cores,
        processes=processes,
        memory=args.memory,
        walltime=args.walltime,
        queue=args.queue,
        account=args.account,
        job_name=args.job_name,
        interface=args.interface,
        local_directory=args.local_directory,
        log_directory=args.log_directory,
        python=sys.executable,
        job_extra_directives=list(args.job_extra),
        job_script_prologue=prologue,
        worker_extra_args=worker_extra_args,
        scheduler_options=scheduler_options,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from distributed import Client

    with make_cluster(args) as cluster:
        if args.print_job_script:
            print(cluster.job_script())
            return 0

        import mmf_stream as ms

        wanted = args.wait_workers if args.wait_workers is not None else args.jobs * args.processes
        print(f"scheduler {cluster.scheduler_address}, dashboard {cluster.dashboard_link}", flush=True)
        print(f"submitting {args.jobs} job(s) of {args.processes} worker(s); waiting for {wanted}", flush=True)
        cluster.scale(jobs=args.jobs)
        with Client(cluster) as client:
            client.wait_for_workers(wanted, timeout=args.wait_timeout)
            labels = ms.read_labels(args.labels) if args.labels else None
            start = time.perf_counter()
            result = ms.factorize(
                args.input, order=args.order, core_size=args.core_size, seed=args.seed, labels=labels,
                schedule=args.schedule, means=args.means, client=client,
            )
            seconds = time.perf_counter() - start
        result.save(args.out, overwrite=args.overwrite)
        print(f"factorized {args.input or args.means} in {seconds:.1f} s on {wanted} worker(s) -> {args.out}")
        print(result.summary(levels=5))
    return 0


if __name__ == "__main__":
    sys.exit(main())
