#!/bin/bash
# curriculum: blue/black yes/no from demo-1step; the "yes" target grows from the mask to the full card
cd /work/main
BASE=demo-1step; PREV=runs/s19/bb
for P in "0 120 0" "8 100 0" "24 100 0" "56 100 0" "flat 150 0.5"; do
  set -- $P; R=$1; STEPS=$2; CW=$3
  D=runs/s20/bb-r$R; O=runs/s20/c-r$R
  [ -d $D ] || python runs/s20/curric.py runs/s19/bb-data $D $R > /dev/null 2>&1 || exit 1
  sed "s#BASE#$BASE#; s#DATA#$D#; s#OUT#$O#; s#CW#$CW#; s#STEPS#$STEPS#" runs/s20/phase.yaml.in > runs/s20/c-r$R.yaml
  date; echo phase $R
  icv-train --config runs/s20/c-r$R.yaml --mixed-precision bf16 --resume latest > runs/s20/c-r$R.log 2>&1 || exit 1
  for S in synth heldout; do python runs/s20/ceval.py $O/model synth:runs/demo/$S 200 2>/dev/null | tail -1; done
  BASE=$O/model; PREV=$O
done
date; echo done
