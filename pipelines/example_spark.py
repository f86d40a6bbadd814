"""The spark example's job file (specs/spark_example.yaml): revenue per customer in PySpark.

The spark kind runs it in its driver: `job.inputs["orders"]` is the upstream extract's
bronze.orders (also the temp view `orders`); the DataFrame returned is written to the lake by
the executor as the spec's `revenue_by_customer` output (docs/kinds.md, "spark").
"""

from __future__ import annotations

from typing import Any


def run(job: Any) -> dict[str, Any]:
    """The paid orders' count and revenue per customer, as one DataFrame."""
    job.log("summing paid orders", inputs=sorted(job.inputs))
    revenue = job.spark.sql(
        "select customer, count(*) as orders, cast(sum(amount) as bigint) as revenue "
        "from orders where status = 'paid' group by customer")
    return {"revenue_by_customer": revenue}
