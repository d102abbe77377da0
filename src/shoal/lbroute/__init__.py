"""Load balancers and host-based HTTP routing (Aliyun lb/routing labels), served by a leader-run haproxy."""
