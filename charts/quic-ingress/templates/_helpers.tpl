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

{{/* The namespaces watched, as JSON (`include ... | fromJsonArray`): watchNamespaces plus
the deprecated watchNamespace, without duplicates; empty means every namespace. */}}
{{- define "quic-ingress.watchNamespaces" -}}
{{- $namespaces := .Values.controller.watchNamespaces | default list -}}
{{- with .Values.controller.watchNamespace -}}
{{- $namespaces = append $namespaces . -}}
{{- end -}}
{{- $namespaces | uniq | toJson -}}
{{- end -}}

{{/* The namespace holding the leader-election Lease: the release's, or the deprecated
watchNamespace (where the Lease always was with it, so upgrading elects no second leader). */}}
{{- define "quic-ingress.leaseNamespace" -}}
{{ .Values.controller.watchNamespace | default .Release.Namespace }}
{{- end -}}

{{- define "quic-ingress.ticketSecret" -}}
{{ .Values.sessionTickets.existingSecret | default (printf "%s-session-tickets" (include "quic-ingress.fullname" .)) }}
{{- end -}}
