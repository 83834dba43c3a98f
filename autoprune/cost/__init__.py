"""What a policy costs: analytic FLOPs and params (:mod:`.flops`), and device latency (:mod:`.latency_table`)."""
