"""A user program, run as __main__: a class, a function and a module given to one job only.

``Point`` and ``scale_up`` are defined after the cluster is created, so the computation cannot carry
them: only the first job's ``dispy_job_depends`` bring them. Its argument is a ``__main__.Point``,
which the node can load only once the job's own class is installed. The second job runs in the same
job process (``jobs_per_process``) and must see none of it; the third brings another ``job_mod.py``
and must import that one, not the first job's.
"""

import os
import sys

import dispy

OFFSET = 1000  # a global of __main__: the computation travels by value (dill), not as source


def compute(point):
    import sys

    if point is None:  # what the job sees of earlier jobs' depends
        seen = sorted(name for name in ("Point", "scale_up") if name in globals())
        return os.getpid(), seen, "job_mod" in sys.modules
    import job_mod

    return os.getpid(), point.norm2() + scale_up(point.x) + job_mod.VALUE + OFFSET, type(point).__name__


if __name__ == "__main__":
    port, module_dir, other_module = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sys.path.insert(0, module_dir)
    import job_mod

    cluster = dispy.JobCluster(compute, nodes=["127.0.0.1"], dispy_port=port, jobs_per_process=5)

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def norm2(self):
            return self.x * self.x + self.y * self.y

    def scale_up(v):
        return v * 100

    first = cluster.submit(Point(1, 2), dispy_job_depends=[Point, scale_up, job_mod])
    print("FIRST", repr(first()), first.status, repr(first.exception))
    second = cluster.submit(None)
    print("SECOND", repr(second()), second.status, repr(second.exception))
    third = cluster.submit(Point(3, 0), dispy_job_depends=[Point, scale_up, other_module])
    print("THIRD", repr(third()), third.status, repr(third.exception))
    cluster.close()
