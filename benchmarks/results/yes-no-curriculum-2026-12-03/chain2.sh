#!/bin/bash
# continue from r56: grow further, then the flat card without the colour BCE
cd /work/main
BASE=runs/s20/c-r56/model
for P in "96 100 0 c2-r96" "flat 150 0 c2-rflat"; do
  set -- $P; R=$1; STEPS=$2; CW=$3; O=runs/s20/$4
  D=runs/s20/bb-r$R
  [ -d $D ] || python runs/s20/curric.py runs/s19/bb-data $D $R > /dev/null 2>&1 || exit 1
  sed "s#BASE#$BASE#; s#DATA#$D#; s#OUT#$O#; s#CW#$CW#; s#STEPS#$STEPS#" runs/s20/phase.yaml.in > $O.yaml
  date; echo phase $R
  icv-train --config $O.yaml --mixed-precision bf16 --resume latest > $O.log 2>&1 || exit 1
  for S in synth heldout; do python runs/s20/ceval.py $O/model synth:runs/demo/$S 200 2>/dev/null | tail -1; done
  BASE=$O/model
done
date; echo done
