"""Entry points that run in other processes, apart from the kernel-side launcher (`llm_magics.launch`).

    worker.py      `python -m llm_magics.jobs.worker SPEC`: one torchrun rank of a `--devices` run
    job.py         an exported job's `train.py` calls `main`: the recorded run again, in one process or under torchrun
    export.py      `%llm export RUN PATH`: writes that job (script, options, data, README)
    accelerate.py  the job's accelerate launcher config (`accelerate.yaml`)

They sit in the face layer: like a magic, each turns a request (a spec file, a job folder) into a run through
the registry and the runner; the launcher below only starts processes and reads what they write.
"""
