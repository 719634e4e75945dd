#!/bin/sh
# git workload with deterministic output (fixed identities and dates, set by
# the caller): init, many commits, branches, merge, gc, log, diff, blame.
# Usage: git_workload.sh <empty directory>
set -e
cd "$1"
git init -q -b main repo
cd repo
i=0
while [ $i -lt 40 ]; do
    j=0
    while [ $j -lt 20 ]; do
        echo "line $j of file $((i % 7)) at commit $i" >> "file$((i % 7)).txt"
        j=$((j + 1))
    done
    seq $i $((i * 50)) > "numbers$((i % 3)).txt"
    git add -A
    git commit -q -m "commit $i: update file$((i % 7)).txt"
    if [ $i -eq 20 ]; then
        git branch -q side
    fi
    i=$((i + 1))
done
git checkout -q side
echo "side change" > side.txt
git add side.txt
git commit -q -m "side commit"
git checkout -q main
git merge -q --no-edit side
git tag -a v1 -m "tag v1"
git gc -q --aggressive
git fsck --no-progress
git count-objects -v | grep -v size
git log --format='%H %an <%ae> %ad %s' --date=iso-strict
git log --stat --format=%s -5
git diff HEAD~10 HEAD --stat
git diff HEAD~3 HEAD -- numbers1.txt | head -50
git blame -s file3.txt | head -20
git rev-list --count --all
git describe --tags
git show --format=%s v1 | head -20
