# In-memory processing as the reference describes it: setup loads data into globals, jobs use it,
# cleanup deletes it; NodeAllocate gives setup its arguments. Written from client-api.txt only.
import sys, dispy

def node_setup(data_file):
    global data
    with open(data_file) as fd:
        data = [int(line) for line in fd]
    return 0

def node_cleanup(data_file):
    global data
    del data

def compute(i):
    return sum(data) * i, dispy_node_name is not None

if __name__ == '__main__':
    port, data_file = int(sys.argv[1]), sys.argv[2]
    nodes = [dispy.NodeAllocate('127.0.0.1', port=port + 1, depends=[data_file],
                                setup_args=(data_file.rsplit('/', 1)[-1],))]
    cluster = dispy.JobCluster(compute, nodes=nodes, setup=node_setup, cleanup=node_cleanup,
                               host='127.0.0.1', dispy_port=port)
    jobs = [cluster.submit(i) for i in range(5)]
    results = [job() for job in jobs]
    cluster.close()
    print('RESULTS', results)
