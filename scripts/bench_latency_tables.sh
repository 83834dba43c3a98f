#!/usr/bin/env bash
# Build and validate latency tables on this machine, one protocol per line (threads, thread pinning); the figures in
# benchmarks/README.md, "Latency tables by device". Tables without pinning go where `search` finds them
# (latency_tables/<device-id>/); pinned ones and every validation go under benchmarks/latency_<isa>/.
#   bash scripts/bench_latency_tables.sh [CASE ...]     CASE: model:shape:threads[:pinned][:samples]
set -euo pipefail
cd "$(dirname "$0")/.."
ap=.venv/bin/autoprune
isa=$(grep -o 'avx512[a-z]*\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ' | sed 's/ $//')
level=$(case "$isa" in *avx512f*) echo avx512;; *avx2*) echo avx2;; *) echo other;; esac)
dir=benchmarks/latency_$level
mkdir -p "$dir"
echo "CPU ISA: $isa" | tee -a "$dir/log.txt"
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(
    fmnist-resnet20:64x1x28x28:2::30 resnet18:1x3x224x224:2 resnet18:1x3x224x224:1 mobilenet_v2:1x3x224x224:1
    mobilenet_v2:1x3x224x224:2 mobilenet_v2:1x3x224x224:1:pinned resnet18:1x3x224x224:2:pinned)
for c in "${cases[@]}"; do
    IFS=: read -r model shape threads pinned samples <<<"$c"
    name="$model-$shape-${threads}t${pinned:+-pinned}"
    flags=(--threads "$threads")
    table_out=()
    if [ -n "$pinned" ]; then flags+=(--affinity); table_out=(--out "$dir/tables/$name.csv"); fi
    echo "== $name ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$dir/log.txt"
    $ap latency-table build --model "$model" --input-shape "$shape" "${flags[@]}" "${table_out[@]}" 2>/dev/null \
        | tee "$dir/$name.build.txt" | tail -1 | tee -a "$dir/log.txt"
    table=$(grep -o -- '-> .*\.csv' "$dir/$name.build.txt" | tail -1 | cut -c4-)
    $ap latency-table validate --table "$table" --samples "${samples:-50}" --repeats 30 --rounds 6 \
        --plot "$dir/$name.png" 2>/dev/null | tee "$dir/$name.validate.txt" | tail -40 >>"$dir/log.txt"
done
