require ["body","date","regex","editheader","vacation","envelope","subaddress","encoded-character"];
if body :text :contains "body" { addheader "X-A" "${hex:41}"; }
if date :zone "+0000" "date" "year" "2026" { deleteheader :index 1 "subject"; }
if envelope :detail "to" "c" { vacation :days 2 :subject "s" text:
back soon
.
; }
if header :regex "subject" "^f.*z$" { stop; }
