#!/bin/bash
# portcullis-healthcheck: the containers' health check, without curl in the image.
#
#   portcullis-healthcheck tcp PORT         something accepts connections on 127.0.0.1:PORT
#   portcullis-healthcheck http PORT PATH   GET http://127.0.0.1:PORT/PATH answers 200
set -euo pipefail
case "${1:-}" in
    tcp)
        exec 3<>"/dev/tcp/127.0.0.1/$2"
        ;;
    http)
        exec 3<>"/dev/tcp/127.0.0.1/$2"
        printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$3" >&3
        read -r -t 5 _ status _ <&3
        [ "$status" = 200 ]
        ;;
    *)
        echo "usage: portcullis-healthcheck tcp PORT | http PORT PATH" >&2
        exit 2
        ;;
esac
