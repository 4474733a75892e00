require ["fileinto","variables","imap4flags","relational","comparator-i;ascii-numeric"];
if header :matches "subject" "*fuzz*" { set "x" "${1}"; fileinto :flags "\\Seen" "F.${x}"; }
elsif address :domain :is "from" "example.org" { redirect "x@example.com"; }
else { if size :over 1K { discard; } keep; }
