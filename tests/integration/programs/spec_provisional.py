# The provisional-results example of the client API reference, as a user would write it from that
# text alone; only nodes=['127.0.0.1'], host='127.0.0.1' and the port (argv) are added.
import random, sys, dispy

def compute(n): # executed on nodes
    import random, time, socket
    name = socket.gethostname()
    cur_best = 1
    for i in range(0, n):
        r = random.uniform(0, 1)
        if r <= cur_best:
            # possible result
            dispy_provisional_result((name, r))
            cur_best = r
        time.sleep(0.01)
    # final result
    return (name, cur_best)

provisional = []

def job_status(job): # executed at the client
    if job.status == dispy.DispyJob.ProvisionalResult:
        provisional.append(job.result[1])
        if job.result[1] < 0.005:
            # acceptable result; terminate jobs
            print('%s computed: %s' % (job.result[0], job.result[1]))
            # 'jobs' and 'cluster' are created in '__main__' below
            for j in jobs:
                if j.status in [dispy.DispyJob.Created, dispy.DispyJob.Running,
                                dispy.DispyJob.ProvisionalResult]:
                    cluster.cancel(j)

if __name__ == '__main__':
    dispy.config.DispyPort = int(sys.argv[1])
    cluster = dispy.JobCluster(compute, job_status=job_status, nodes=['127.0.0.1'], host='127.0.0.1')
    jobs = []
    for n in range(4):
        job = cluster.submit(random.randint(50,100))
        if job is None:
            print('creating job %s failed!' % n)
            continue
        job.id = n
        jobs.append(job)
    cluster.wait()
    cluster.print_status()
    cluster.close()
    statuses = sorted(set(j.status for j in jobs))
    ok = all(j.status in (dispy.DispyJob.Finished, dispy.DispyJob.Cancelled) for j in jobs)
    print('PROVISIONAL', len(provisional), 'STATUSES', statuses, 'OK', ok)
    for j in jobs:
        if j.status == dispy.DispyJob.Finished:
            assert 0 <= j.result[1] <= 1, j.result
