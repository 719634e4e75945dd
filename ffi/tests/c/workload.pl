#!/usr/bin/perl
# Allocation-heavy perl workload with deterministic output: hashes, arrays,
# strings, regexes, sorting, closures, string eval. Run with and without
# LD_PRELOAD=librseq_malloc.so; the outputs must be identical. The
# optional argument scales it (default 200000; the benchmark harness's
# `perl` workload passes its own sizes).
use strict;
use warnings;
use Digest::MD5 qw(md5_hex);

my $n = @ARGV ? int($ARGV[0]) : 200_000;
my %h;
my $seed = 12345;
sub rnd { $seed = ($seed * 1103515245 + 12345) % 2147483648; return $seed; }

for my $i (1 .. $n) {
    my $k = sprintf("key-%06d-%s", rnd() % int($n * 3 / 4), "x" x (rnd() % 40));
    push @{ $h{$k} }, $i;
}
printf "keys: %d\n", scalar keys %h;

my @sorted = sort { scalar(@{ $h{$b} }) <=> scalar(@{ $h{$a} }) || $a cmp $b } keys %h;
printf "top: %s (%d)\n", $sorted[0], scalar @{ $h{ $sorted[0] } };
print "digest keys: ", md5_hex(join ",", @sorted), "\n";

my $text = join " ", map { "word$_" x (1 + $_ % 3) } 1 .. int($n / 4);
my %count;
$count{$1}++ while $text =~ /(word\d*?7\d*)/g;
printf "matches: %d distinct, %d total\n", scalar keys %count, eval { my $s = 0; $s += $_ for values %count; $s };
(my $copy = $text) =~ s/word(\d+)/W<$1>/g;
print "digest subst: ", md5_hex($copy), "\n";

my @subs = map { my $k = $_; sub { return $k * $_[0] } } 1 .. int($n / 20);
my $acc = 0;
$acc += $_->(3) for @subs;
print "closures: $acc\n";

my @matrix = map { [ map { $_ * 2 } 1 .. 300 ] } 1 .. 300;
my $trace = 0;
$trace += $matrix[$_][$_] for 0 .. 299;
print "trace: $trace\n";

my $evald = 0;
$evald += eval "$_ * $_" for 1 .. 2000;
print "eval: $evald\n";

my @big;
for my $r (1 .. 20) {
    push @big, "y" x (1 << ($r % 20));
    shift @big if @big > 5;
}
print "big: ", join(",", map { length } @big), "\n";
%h = ();
print "done\n";
