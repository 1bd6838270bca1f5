"""A user program, run as __main__: computation and depends defined here travel by value."""

import os
import sys

import dispy


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def norm2(self):
        return self.x * self.x + self.y * self.y


def helper(v):
    return v + 1000


scale = Point(2, 3)  # an instance in depends


def compute(point, data_name):
    import mod_dep

    with open(data_name) as f:
        data = f.read().strip()
    return point.norm2() + helper(0) + scale.norm2() + mod_dep.VALUE, data, type(point).__name__


if __name__ == "__main__":
    port, data_file, module_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sys.path.insert(0, module_dir)
    import mod_dep

    cluster = dispy.JobCluster(compute, nodes=["127.0.0.1"], dispy_port=port,
                               depends=[Point, helper, scale, mod_dep, data_file])
    job = cluster.submit(Point(1, 2), os.path.basename(data_file))
    print("RESULT", repr(job()), job.status, repr(job.exception))
    cluster.close()
