#!/usr/bin/perl
# geoip-mmdb.pl - build a MaxMind DB (.mmdb) country database from range files
#
#   geoip-mmdb.pl [--field a.b] [--type NAME] OUT.mmdb FILE...
#
# Each FILE holds lines "LOW,HIGH,CC" in the format of Debian's tor-geoipdb
# (/usr/share/tor/geoip: LOW and HIGH as IPv4 integers; geoip6: IPv6 text);
# dotted IPv4 works too, '#' starts a comment, "??" (unknown) is skipped.
# Every range becomes { country => { iso_code => CC } } (or the map path
# --field names), IPv4 in an IPv6 tree with ::ffff:0:0/96 aliased to it, so
# v4-mapped lookups find the same country. OUT is written to OUT.tmp first
# and renamed: a running portcullisd never sees half a file.
use strict;
use warnings;
use Getopt::Long;
use MaxMind::DB::Writer::Tree;

my $field = 'country.iso_code';
my $type = 'Portcullis-Country';
GetOptions('field=s' => \$field, 'type=s' => \$type)
    or die "usage: $0 [--field a.b] [--type NAME] OUT.mmdb FILE...\n";
die "usage: $0 [--field a.b] [--type NAME] OUT.mmdb FILE...\n" if @ARGV < 2;
my ($out, @in) = @ARGV;
my @path = split /\./, $field;
die "$0: --field: empty key in \"$field\"\n" if !@path || grep { $_ eq '' } @path;

my %types;
$types{$_} = 'map' for @path[0 .. $#path - 1];
$types{$path[-1]} = 'utf8_string';

my $tree = MaxMind::DB::Writer::Tree->new(
    ip_version => 6,
    record_size => 24,
    database_type => $type,
    languages => ['en'],
    description => { en => 'Country by IP address (IPFire Location data via tor-geoipdb, CC BY-SA 4.0)' },
    alias_ipv6_to_ipv4 => 1,
    remove_reserved_networks => 0,
    merge_strategy => 'none',
    map_key_type_callback => sub { $types{ $_[0] } },
);

# one data record per country, shared by all its ranges
my %rec;
sub record {
    my ($cc) = @_;
    return $rec{$cc} //= do {
        my $v = $cc;
        $v = { $_ => $v } for reverse @path;
        $v;
    };
}

sub v4 {
    my ($s) = @_;
    return $s unless $s =~ /^\d+$/;
    return join '.', unpack 'C4', pack 'N', $s;
}

my ($n, $skipped) = (0, 0);
for my $f (@in) {
    open my $fh, '<', $f or die "$0: $f: $!\n";
    while (my $line = <$fh>) {
        next if $line =~ /^\s*(#|$)/;
        chomp $line;
        $line =~ s/\r$//;
        my ($lo, $hi, $cc) = split /,/, $line;
        die "$0: $f:$.: expected LOW,HIGH,CC\n" unless defined $cc && $cc =~ /^([A-Z]{2}|\?\?)$/;
        next if $cc eq '??';
        # 2002::/16 (6to4) is an alias of the IPv4 tree here: its IPv4 data wins
        if ($lo =~ /^2002:/i) {
            $skipped++;
            next;
        }
        $tree->insert_range(v4($lo), v4($hi), record($cc));
        $n++;
    }
    close $fh;
}
open my $o, '>:raw', "$out.tmp" or die "$0: $out.tmp: $!\n";
$tree->write_tree($o);
close $o or die "$0: $out.tmp: $!\n";
rename "$out.tmp", $out or die "$0: $out: $!\n";
print STDERR "$0: $out: $n ranges ($skipped in 6to4 space left to IPv4)\n" if $ENV{GEOIP_MMDB_VERBOSE};
