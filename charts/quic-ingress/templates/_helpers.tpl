{{/* Names and labels shared by the templates. */}}
{{- define "quic-ingress.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "quic-ingress.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "quic-ingress.labels" -}}
{{ include "quic-ingress.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "quic-ingress.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The namespace holding the leader-election Lease: the watched one, else the release's. */}}
{{- define "quic-ingress.leaseNamespace" -}}
{{ .Values.controller.watchNamespace | default .Release.Namespace }}
{{- end -}}

{{- define "quic-ingress.ticketSecret" -}}
{{ .Values.sessionTickets.existingSecret | default (printf "%s-session-tickets" (include "quic-ingress.fullname" .)) }}
{{- end -}}
