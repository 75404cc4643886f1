set -e
cd "$(dirname "$0")/../../.."
E="scripts/env .venv/bin/intrs"
for s in 0.5 1.0; do
  d=runs/sat/s$s
  [ -f $d/checkpoint.pt ] || /usr/bin/time -f "train $s %e s" $E train --dataset fashion-mnist --sigma $s --schedule short --out $d
  [ -f $d/ptq.npz ] || $E quantize --checkpoint $d/checkpoint.pt --ptq --out $d/ptq.npz
  [ -f $d/ptq-sat.npz ] || $E quantize --checkpoint $d/checkpoint.pt --ptq --saturate-input --out $d/ptq-sat.npz
  for v in ptq ptq-sat; do
    [ -f $d/$v.tsv ] || /usr/bin/time -f "certify $s $v %e s" $E certify --system floatrs-quant --ptq-model $d/$v.npz --sigma $s --n 1000 --n0 100 --alpha 0.001 --skip 20 --max 200 --out $d/$v.tsv
  done
  [ -f $d/fp.tsv ] || /usr/bin/time -f "certify $s fp %e s" $E certify --system floatrs-fp --checkpoint $d/checkpoint.pt --sigma $s --n 1000 --n0 100 --alpha 0.001 --skip 20 --max 200 --out $d/fp.tsv
done
$E analyze runs/sat/s0.5/fp.tsv runs/sat/s0.5/ptq.tsv runs/sat/s0.5/ptq-sat.tsv runs/sat/s1.0/fp.tsv runs/sat/s1.0/ptq.tsv runs/sat/s1.0/ptq-sat.tsv
