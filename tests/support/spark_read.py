"""Apache Spark (local mode, delta-spark) reads jinryu's Delta tables and prints what the test
compares with jinryu's own SQL: people per local date, rows per table, and the table versions.

    python3 spark_read.py <storage root>

The delta-spark jars are resolved by Ivy from ~/.m2 (.ci/setup fetches them with Maven).
"""
import sys

from delta import configure_spark_with_delta_pip
from pyspark.sql import SparkSession, functions as F

root = sys.argv[1]
builder = (
    SparkSession.builder.master("local[1]")
    .appName("jinryu-spark-reader")
    .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
    .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
    .config("spark.ui.enabled", "false")
    .config("spark.ui.showConsoleProgress", "false")
    .config("spark.sql.shuffle.partitions", "2")
    .config("spark.sql.session.timeZone", "UTC")
    .config("spark.driver.memory", "1g")
)
spark = configure_spark_with_delta_pip(builder).getOrCreate()
spark.sparkContext.setLogLevel("ERROR")

agg = spark.read.format("delta").load(f"{root}/aggregates")
for row in agg.groupBy("date").agg(F.sum("count").alias("people")).orderBy("date").collect():
    print(f"date,{row['date']},{row['people']}")
print(f"rows,aggregates,{agg.count()}")
q = spark.read.format("delta").load(f"{root}/quarantine")
print(f"rows,quarantine,{q.count()}")
for table in ("aggregates", "quarantine"):
    v = spark.sql(f"DESCRIBE HISTORY delta.`{root}/{table}`").agg(F.max("version")).first()[0]
    print(f"version,{table},{v}")
spark.stop()
