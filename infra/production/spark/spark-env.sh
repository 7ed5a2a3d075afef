# $SPARK_HOME/conf/spark-env.sh on every node of the standalone cluster
# (Spark 4.2, the pyspark Lamina pins). Start the master with
#   $SPARK_HOME/sbin/start-master.sh
# and each worker with
#   $SPARK_HOME/sbin/start-worker.sh spark://spark-master.lamina.internal:7077
# (both are wrappers around `bin/spark-class org.apache.spark.deploy.{master.Master,worker.Worker}`,
# the commands Lamina's own tests run on loopback).

SPARK_MASTER_HOST=spark-master.lamina.internal
SPARK_MASTER_PORT=7077
SPARK_MASTER_WEBUI_PORT=8080

# Per worker: what it offers to executors. A GPU node with 4 GPUs offers
# 16 cores, so four training executors of 4 cores and 1 GPU each fit.
SPARK_WORKER_CORES=16
SPARK_WORKER_MEMORY=60g
SPARK_WORKER_DIR=/var/lib/spark/work
# The worker's GPUs are declared in spark-defaults.conf
# (spark.worker.resource.gpu.*), which the worker daemon reads too.

# Executors run the same Python as the drivers: the Lamina venv, installed
# at the same path on every node.
PYSPARK_PYTHON=/opt/lamina/.venv/bin/python
